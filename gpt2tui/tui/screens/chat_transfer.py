"""Export (Ctrl+O) and import (F5): the chat screen's side of `gpt2tui.transfer`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ...store import free_name
from ...transfer import TransferError, export_file, import_file
from .export import ExportScreen
from .import_chats import ImportScreen


class TransferActions:
    """Mixed into `ChatScreen`, whose store and conversation these use."""

    def action_export(self) -> None:
        conversation_id = self.conversation_id
        if conversation_id is None and not self.store.conversations(limit=1):
            self.notify("There are no conversations to export yet.")
            return
        slug = re.sub(r"[^\w-]+", "-", self.conversation_title.lower()).strip("-")[:40] or "chat"
        # In the current directory the suggestion steps aside from existing files; in a folder the user names, the
        # store steps aside there.
        names = {
            (fmt, everything): f"chats.{fmt}" if everything else f"{slug}-{conversation_id}.{fmt}"
            for fmt in ("md", "json")
            for everything in (False, True)
        }
        suggested = {choice: str(free_name(name)) for choice, name in names.items()}

        def write(path: str, fmt: str, everything: bool, create_folder: bool) -> Path:
            if not everything and conversation_id is None:
                raise TransferError("this conversation is not saved yet; choose every conversation")
            # A string, not a Path, so that `dir/` keeps the separator that says "into this folder".
            target = os.path.join(os.getcwd(), os.path.expanduser(path))
            return export_file(
                self.store,
                target,
                fmt,
                None if everything else conversation_id,
                default_name=names[(fmt, everything)],
                create_folder=create_folder,
            )

        def written(path: Path | None) -> None:
            if path is not None:
                self.notify(f"Exported to {path}", title="Export")

        self.app.push_screen(ExportScreen(write, suggested, everything=conversation_id is None), written)

    def action_import_chats(self) -> None:
        if not self._can_change("import"):
            return

        async def imported(ids: list[int] | None) -> None:
            if not ids:
                return
            self.notify(f"Imported {len(ids)} conversation{'s' if len(ids) != 1 else ''}.", title="Import")
            self.query_one("#sidebar").refresh_list(self.store, self.conversation_id)
            await self.open_conversation(ids[0])  # unless this one cannot be left yet (it says why)

        self.app.push_screen(ImportScreen(lambda path: import_file(self.store, path)), imported)
