"""Edit, resend and branch: the chat screen's actions on a conversation's tree (`gpt2tui.store_tree`).

A message is selected in the conversation (Shift+Tab to it, or a click; ↑/↓ move). Enter (or E) on one of the user's
messages puts its text in the message box; sending it starts a branch there: the old message and everything after it
stay, as alternative "1/2" beside the new one's "2/2". Ctrl+R on a reply (the selected one, else the last) writes a new
reply beside it. ←/→ flip the selected message through its alternatives, and the conversation below follows. The
prompt is always the path shown, never a hidden branch.
"""

from __future__ import annotations

from ...chat import ChatError
from ...store import Conversation, StoreError, StoreWriteError
from ..widgets import MessageList, MessageView, PromptInput

EDIT_TITLE = "Editing: Enter sends it as a new branch (the old one stays) · Esc cancels"


def shown_messages(conversation: Conversation) -> list[dict]:
    """The path shown, as the message list takes it: each message with its id and which alternative it is."""
    siblings: dict[int | None, list[int]] = {}
    for m in conversation.nodes:
        siblings.setdefault(m.parent_id, []).append(m.id)
    messages = []
    for m in conversation.messages:
        if m.role == "system":
            continue
        message = m.to_chat()
        if m.role == "assistant" and m.finish_reason is None:
            message["finish_reason"] = "cancelled"  # the app was killed while it streamed
        around = siblings.get(m.parent_id, [m.id])
        message["id"], message["branch"] = m.id, (around.index(m.id) + 1, len(around))
        messages.append(message)
    return messages


class BranchActions:
    """Mixed into `ChatScreen`, whose store, session and streaming these use."""

    editing: MessageView | None = None  # the message whose edit is in the message box
    draft: str = ""  # what the message box held before the edit, given back after it

    def _history(self, views: list[MessageView]) -> list[dict]:
        return [{"role": v.role, "content": v.content} for v in views]

    def _ids_known(self, views: list[MessageView]) -> bool:
        if all(v.message_id is not None for v in views):
            return True
        self.notify(
            "This part of the conversation is not saved yet, so nothing can branch from it; try again once "
            "it is.",
            severity="warning",
        )
        return False

    # -- editing -----------------------------------------------------------------------------------------------

    def action_edit_message(self) -> None:
        view = self.query_one(MessageList).selected
        if view is None:
            self.notify("Select a message first: Shift+Tab to the conversation, then ↑/↓.")
            return
        if view.role != "user":
            self.notify("Only your own messages can be edited; Ctrl+R writes a new reply beside this one.")
            return
        if not self._can_change("edit a message") or not self._ids_known([view]):
            return
        prompt = self.query_one(PromptInput)
        if self.editing is None:
            self.draft = prompt.text
        else:
            self.editing.remove_class("editing")
        self.editing = view
        view.add_class("editing")
        prompt.load_text(view.content)
        prompt.move_cursor(prompt.document.end)
        prompt.border_title = EDIT_TITLE
        prompt.focus()

    def cancel_edit(self) -> None:
        """Leave the edit: the message box gets back what it held before."""
        self._end_edit()
        self.query_one(PromptInput).load_text(self.draft)
        self.draft = ""

    def _end_edit(self) -> None:
        if self.editing is not None:
            self.editing.remove_class("editing")
        self.editing = None
        self.query_one(PromptInput).border_title = None

    async def resend_edited(self, text: str) -> None:
        """Send the edited message as a sibling of the one edited, and stream the reply to it."""
        message_list = self.query_one(MessageList)
        views = message_list.views
        edited = self.editing
        if edited not in views:  # the conversation changed under the edit
            self.cancel_edit()
            self.notify("The message being edited is no longer shown; nothing was sent.", severity="warning")
            return
        index = views.index(edited)
        before = views[:index]
        if not self._ids_known(before):
            return
        previous = self.session.messages
        try:
            self.session.set_messages(self._history(before))
            reply = self.session.reply(text)
        except ChatError as e:
            self.session.set_messages(previous)
            self.notify(str(e), severity="error")
            return
        prompt = self.query_one(PromptInput)
        self._end_edit()
        prompt.load_text(self.draft)  # what was being typed before the edit is not lost
        self.draft = ""
        conversation_id = self.conversation_id
        user_id = reply_id = None
        if self.unsaved is None:
            try:
                parent = before[-1].message_id if before else None
                user_id = self.store.append_message(conversation_id, "user", text, parent_id=parent).id
                reply_id = self.store.append_message(conversation_id, "assistant", "").id
            except StoreWriteError as e:
                self._not_saved(e)  # the reply goes on; the branch is written once the database lets us
            except StoreError as e:
                reply.close()
                self.notify(f"The message could not be saved: {e}", severity="error")
                await self.open_conversation(conversation_id)
                return
        count = (edited.branch or (1, 1))[1] + 1
        for view in views[index:]:
            await view.remove()
        await message_list.add(MessageView("user", text, message_id=user_id, branch=(count, count)))
        await self._stream(reply, conversation_id, reply_id)

    # -- regenerating --------------------------------------------------------------------------------------------

    async def action_regenerate(self) -> None:
        if self.session is None or self.conversation_id is None:
            self.notify("There is no reply to regenerate yet.", severity="warning")
            return
        if not self._can_change("regenerate"):
            return
        message_list = self.query_one(MessageList)
        views = message_list.views
        selected = message_list.selected if message_list.has_focus else None
        if selected is not None and selected.role == "assistant":
            target = selected
        else:
            target = views[-1] if views and views[-1].role == "assistant" else None
        before = views[: views.index(target)] if target is not None else views
        if not before or before[-1].role != "user":
            self.notify("There is no message to reply to yet.", severity="warning")
            return
        if self.unsaved is None and not self._ids_known(before[-1:]):
            return
        previous = self.session.messages
        try:
            self.session.set_messages(self._history(before))
            reply = self.session.regenerate()
        except ChatError as e:
            self.session.set_messages(previous)
            self.notify(str(e), severity="warning")
            return
        reply_id = None
        if self.unsaved is None:
            try:
                reply_id = self.store.append_message(
                    self.conversation_id, "assistant", "", parent_id=before[-1].message_id
                ).id
            except StoreWriteError as e:
                self._not_saved(e)
            except StoreError as e:
                reply.close()
                self.notify(f"The reply could not be saved: {e}", severity="error")
                await self.open_conversation(self.conversation_id)
                return
        count = (target.branch or (1, 1))[1] + 1 if target is not None else 1
        if target is not None:
            for view in views[views.index(target) :]:
                await view.remove()
        await self._stream(reply, self.conversation_id, reply_id)
        self.reply_view.set_branch(reply_id, (count, count))

    # -- switching branches ------------------------------------------------------------------------------------

    async def action_branch(self, step: int) -> None:
        message_list = self.query_one(MessageList)
        view = message_list.selected
        if view is None or view.branch is None or view.branch[1] < 2:
            self.app.bell()
            return
        if not self._can_change("switch to another branch"):
            return
        if self.unsaved is not None or view.message_id is None:
            self.notify(
                "This conversation is not all saved yet; its branches can be switched once it is.",
                severity="warning",
            )
            return
        try:
            conversation = self.store.get(self.conversation_id)
            around = [m.id for m in conversation.siblings(view.message_id)]
            index = around.index(view.message_id) + step
            if not 0 <= index < len(around):
                self.app.bell()
                return
            self.store.switch_branch(self.conversation_id, around[index])
        except (StoreError, ValueError) as e:
            self.notify(f"Could not switch branches: {e}", severity="error")
            return
        position = message_list.views.index(view)
        if self.editing is not None:
            self.cancel_edit()
        await self._show(self.conversation_title, shown_messages(self.store.get(self.conversation_id)))
        message_list.select(position)
        message_list.focus()

    def refresh_branches(self) -> None:
        """Give the messages shown their ids and "2/3" marks from the store, once what is shown is saved."""
        if self.conversation_id is None or self.unsaved is not None:
            return
        try:
            shown = shown_messages(self.store.get(self.conversation_id))
        except StoreError:
            return
        views = self.query_one(MessageList).views
        if [(m["role"], m["content"]) for m in shown] != [(v.role, v.content) for v in views]:
            return  # another reply is being written: the next refresh matches
        for view, message in zip(views, shown, strict=True):
            view.set_branch(message["id"], message["branch"])
