"""The app's keys, and a footer that shows only keys that work where the focus is.

Two layers. The app's bindings (ctrl+g, ctrl+o, ctrl+t, ctrl+s, ctrl+q, F-keys) have priority: they work
everywhere, in a text field too. The main screen's single letters (g, o, t, q, ?, Space, arrows, , . Home End)
are what lazygit and btop users reach for, but a focused text field types them: there the screen turns them
off, so the footer (which shows one key per action, the first it finds from the focus outwards) falls back to
the ctrl key that does work. A focused widget's own keys (the file tree's Space, Home, End) come first too, so
the footer never offers a key that the focused widget would take.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input

# Work everywhere. `show=False` ones are listed in the help (?) instead, to keep the footer short.
APP_BINDINGS = [
    Binding("ctrl+g,f5", "generate", "Generate", priority=True),
    Binding("escape", "cancel", "Cancel"),
    Binding("ctrl+s", "save", "Save", priority=True),
    Binding("ctrl+o", "open", "Open", priority=True),
    Binding("ctrl+t", "takes", "Takes", priority=True),
    Binding("f1", "help", "Help"),
    Binding("ctrl+q,f10", "quit", "Quit", priority=True),
    # not in the footer: the screen's own ctrl+c (copy) sits earlier in its list and would show instead of q
    Binding("ctrl+c", "quit", "Quit", priority=True, show=False),
]

# Outside text fields only: MainScreen turns these off while an Input has the focus.
LETTER_BINDINGS = [
    Binding("escape", "leave_field", "Leave field"),  # on in a field only (see MainScreen.check_action)
    Binding("g", "generate", "Generate"),
    Binding("o", "open", "Open"),
    Binding("t", "takes", "Takes"),
    Binding("space", "play", "Play"),
    Binding("left,comma", "step(-1)", "Step", show=False),
    Binding("right,full_stop", "step(1)", "Step", key_display="←/→"),
    Binding("home", "first", "First", show=False),
    Binding("end", "last", "Last", show=False),
    Binding("f", "focus_files", "Files", show=False),
    Binding("question_mark", "help", "Help", key_display="?"),
    Binding("q", "quit", "Quit"),
]

# The actions of the main screen's letters that run on the app.
_APP_ACTIONS = ("generate", "open", "takes", "play", "step", "first", "last", "focus_files", "help", "quit")


class MainScreen(Screen):
    """The app's screen: its letters work while no text field has the focus; each runs the app's action."""

    BINDINGS = LETTER_BINDINGS

    def in_field(self) -> bool:
        return isinstance(self.focused, Input)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_field":
            return self.in_field()
        if action in _APP_ACTIONS:
            return False if self.in_field() else self.app.check_action(action, parameters)
        return True

    def action_leave_field(self) -> None:
        self.set_focus(None)

    async def _run_app_action(self, action: str) -> None:
        await self.app.run_action(action)

    async def action_generate(self) -> None:
        await self._run_app_action("generate")

    async def action_open(self) -> None:
        await self._run_app_action("open")

    async def action_takes(self) -> None:
        await self._run_app_action("takes")

    async def action_play(self) -> None:
        await self._run_app_action("play")

    async def action_step(self, delta: int) -> None:
        await self._run_app_action(f"step({delta})")

    async def action_first(self) -> None:
        await self._run_app_action("first")

    async def action_last(self) -> None:
        await self._run_app_action("last")

    async def action_focus_files(self) -> None:
        await self._run_app_action("focus_files")

    async def action_help(self) -> None:
        await self._run_app_action("help")

    async def action_quit(self) -> None:
        await self._run_app_action("quit")
