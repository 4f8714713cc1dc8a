"""The layout at small sizes: a 40×12 terminal keeps the conversation usable, the help screen at 80×24 cuts no
description, and toasts never cover the status line."""

from textual.widgets import DataTable
from textual.widgets._toast import Toast

from gpt2tui.tui.keys import ALL_KEYS
from gpt2tui.tui.screens import HelpScreen
from gpt2tui.tui.widgets import StatusBar
from gpt2tui_testkit.tui import loaded, run, wait_until


def inside(inner, outer) -> bool:
    return (
        inner.x >= outer.x
        and inner.y >= outer.y
        and inner.right <= outer.right
        and inner.bottom <= outer.bottom
    )


def test_at_40_by_12_the_sidebar_shrinks_and_everything_stays_on_screen(make_app):
    app = make_app()

    async def body():
        async with app.run_test(size=(40, 12)) as pilot:
            await loaded(pilot)
            screen = app.chat.region
            sidebar, main = app.chat.query_one("#sidebar").region, app.chat.query_one("#main").region
            assert sidebar.width <= 14 and main.width >= 26  # the conversation keeps most of the width
            for selector in ("#messages", "#prompt", "#status", "#model-info", "#state"):
                region = app.chat.query_one(selector).region
                assert region.width > 0 and region.height > 0 and inside(region, screen), selector
            info = str(app.chat.query_one("#model-info").render())
            assert info == "tiny │ 11/512 │ – tok/s"  # narrow: the name and the numbers, no device or bar
            await pilot.press("ctrl+g")  # hidden, the conversation takes the whole width
            assert app.chat.query_one("#main").region.width == 40

    run(body())


def test_the_help_screen_at_80_by_24_cuts_nothing(make_app):
    app = make_app()

    async def body():
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            dialog = app.screen.query_one("#dialog").region
            assert inside(dialog, app.screen.region)
            table = app.screen.query_one(DataTable)
            # Every description wraps inside the table's width: nothing is cut off at the right.
            assert table.virtual_size.width <= table.scrollable_content_region.width
            described = {str(table.get_row_at(i)[1]) for i in range(table.row_count)}
            assert {k.description for k in ALL_KEYS} <= described
            # What does not fit the height scrolls, down to the last key.
            await pilot.press("ctrl+end")
            await pilot.pause()
            assert table.scroll_y == table.max_scroll_y > 0
            assert "Here (" in str(app.screen.query_one("#terminal").render())

    run(body())


def test_toasts_stand_above_the_status_line(make_app):
    app = make_app()

    async def body():
        # run_test hides toasts unless asked
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await loaded(pilot)
            app.notify("A notice long enough to take a few lines of the screen, to see where it stands. " * 2)
            await wait_until(pilot, lambda: list(app.screen.query(Toast)), what="the toast")
            await pilot.pause()
            status = app.chat.query_one(StatusBar).region
            footer = app.chat.query_one("Footer").region
            for toast in app.screen.query(Toast):
                assert toast.region.bottom <= status.y and not toast.region.overlaps(footer)

    run(body())
