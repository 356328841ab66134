"""The takes list (t / ctrl+t) and the side-by-side comparison of two takes.

Every finished or cancelled run is a take (engine.takes); this screen lists them by `Take.label` and lets a
person show one (Enter), save one (s), delete one (d, asking first when it is unsaved) and compare two (c on
the first, c on the second). The app does the work; the screen only asks for it and redraws the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, OptionList
from textual.widgets.option_list import Option

from app_tui.player import Player, PlayerKeys
from app_tui.widgets.preview import FramePreview, ImageMode
from engine.takes import Take

if TYPE_CHECKING:
    from app_tui.app import ArdiffApp


class TakesScreen(ModalScreen[None]):
    """The session's takes; the shown one is marked ▶, one picked for comparison ◆."""

    BINDINGS = [
        Binding("enter", "show", "Show", priority=True),
        Binding("s", "save", "Save"),
        Binding("d,delete", "delete", "Delete", key_display="d"),
        Binding("c", "compare", "Compare"),
        Binding("escape,t,q", "close", "Close", key_display="esc"),
    ]
    AUTO_FOCUS = "#takes-list"

    def __init__(self) -> None:
        super().__init__()
        self.marked: int | None = None  # the first take picked for a comparison

    @property
    def ardiff(self) -> ArdiffApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical(id="takes-box") as box:
            box.border_title = "Takes"
            yield OptionList(id="takes-list")
            yield Label("", id="takes-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_list()

    def refresh_list(self) -> None:
        """Redraw the list from the app's takes, keeping the highlighted take where it still exists."""
        listing = self.query_one(OptionList)
        keep = self.highlighted
        takes = list(self.ardiff.takes)
        listing.clear_options()
        current = self.ardiff.takes.current
        for take in takes:
            mark = "▶ " if take is current else ("◆ " if take.number == self.marked else "  ")
            listing.add_option(Option(mark + take.label, id=str(take.number)))
        numbers = [t.number for t in takes]
        if numbers:
            target = keep if keep in numbers else (current.number if current is not None else numbers[-1])
            listing.highlighted = numbers.index(target)
        hint = ("no takes yet: every finished or cancelled run becomes one" if not takes else
                f"c on another take compares it with take {self.marked}" if self.marked is not None else
                "enter shows · s saves · d deletes · c compares two")
        self.query_one("#takes-hint", Label).update(hint)

    @property
    def highlighted(self) -> int | None:
        """The number of the highlighted take, or None."""
        listing = self.query_one(OptionList)
        if listing.highlighted is None or listing.option_count == 0:
            return None
        return int(listing.get_option_at_index(listing.highlighted).id or 0)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.action_show()

    def action_show(self) -> None:
        number = self.highlighted
        if number is not None:
            self.ardiff.show_take(number)
            self.dismiss(None)

    def action_save(self) -> None:
        number = self.highlighted
        if number is not None:
            self.ardiff.save_take_dialog(number, after=self.refresh_list)

    def action_delete(self) -> None:
        number = self.highlighted
        if number is not None:
            if self.marked == number:
                self.marked = None
            self.ardiff.delete_take(number, after=self.refresh_list)

    def action_compare(self) -> None:
        number = self.highlighted
        if number is None:
            return
        if self.marked is None or self.marked == number:
            self.marked = None if self.marked == number else number
            self.refresh_list()
            return
        first, self.marked = self.marked, None
        self.refresh_list()
        self.app.push_screen(CompareScreen(self.ardiff.takes.get(first), self.ardiff.takes.get(number),
                                           self.ardiff.image_mode))

    def action_close(self) -> None:
        self.dismiss(None)


class CompareScreen(PlayerKeys, ModalScreen[None]):
    """Two takes side by side, stepping together: the same frame index in both (the shorter holds its last
    frame). The player's keys: Space, Left/Right and ,/., Home/End."""

    BINDINGS = [
        Binding("space", "play", "Play/pause"),
        Binding("left,comma", "step(-1)", "Step", show=False),
        Binding("right,full_stop", "step(1)", "Step", key_display="←/→"),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("escape,q", "close", "Close", key_display="esc"),
    ]

    def __init__(self, left: Take, right: Take, mode: ImageMode) -> None:
        super().__init__()
        self.takes = (left, right)
        self.mode = mode
        self.player = Player(self, self._show)

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-box") as box:
            box.border_title = f"Take {self.takes[0].number} and take {self.takes[1].number}"
            with Horizontal(id="compare-previews"):
                for i, take in enumerate(self.takes):
                    preview = FramePreview(take.label, self.mode, id=f"compare-{i}")
                    preview.tooltip = take.label
                    yield preview
        yield Footer()

    def on_mount(self) -> None:
        count = max(len(t.video) for t in self.takes)
        self.player.load(count, self.takes[0].fps, index=0)

    def _show(self, index: int) -> None:
        for i, take in enumerate(self.takes):
            shown = min(index, len(take.video) - 1)
            kind = "context" if shown < take.num_context else "new"
            self.query_one(f"#compare-{i}", FramePreview).show(
                take.video[shown], f"frame {shown + 1}/{len(take.video)} ({kind})")

    @property
    def index(self) -> int:
        return self.player.head.index

    def action_close(self) -> None:
        self.player.clear()
        self.dismiss(None)
