"""The command palette's provider: every action of the key table, found by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .keys import ALL_KEYS

ACTIONS = [k for k in ALL_KEYS if k.action and k.palette]


class ChatCommands(Provider):
    def _run(self, action: str) -> None:
        # Actions without a namespace belong to the chat screen, which is under the palette when it opens.
        target = action if "." in action else f"screen.{action}"
        self.app.call_later(self.app.run_action, target)

    async def discover(self) -> Hits:
        for key in ACTIONS:
            yield DiscoveryHit(key.description, partial(self._run, key.action), help=key.label)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for key in ACTIONS:
            score = matcher.match(key.description)
            if score > 0:
                yield Hit(score, matcher.highlight(key.description), partial(self._run, key.action), help=key.label)
