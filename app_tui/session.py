"""The session's takes on screen: showing, saving, deleting, and asking before unsaved takes would be lost
(a mixin of ArdiffApp, which owns `takes`, the widgets and the player).

Saving writes `engine.save_options.frames_to_save` of a take (the part and size chosen, remembered) to the
path chosen; the suggested name is always the take's own clip's (`suggested_output(take.clip)`), never the
clip open now, so frames of one clip are never offered under another clip's name.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import numpy as np
from textual import work
from textual.widgets import Checkbox, Input, Select

from app_tui.prompts import CANCEL, SAVE, UnsavedScreen
from app_tui.screens import SaveChoice, SaveScreen
from app_tui.widgets.filmstrip import Filmstrip
from app_tui.widgets.preview import FramePreview
from app_tui.worker import one_line
from engine.errors import ArdiffError
from engine.save_options import SaveOptions, frames_to_save, suggested_output
from engine.takes import Take
from engine.video_io import write_video


class TakeSession:
    """ArdiffApp's take actions (see the module docstring)."""

    # ------------------------------------------------------------------ showing

    def show_take(self, number: int, focus: bool = True) -> None:
        """Make take `number` the shown one: previews, filmstrip and the player follow it; with `focus`, the
        result panel takes the focus (unless a field is being edited) so the player's keys act at once."""
        take = self.takes.select(number)
        self.frames = list(take.video)
        self.num_context, self.num_new = take.num_context, take.num_new
        self.main_screen.query_one("#filmstrip", Filmstrip).set_frames(self.frames, take.num_context)
        self.player.load(len(take.video), take.fps)
        self.sub_title = take.label
        self._set_buttons()
        result = self.main_screen.query_one("#newest-preview", FramePreview)
        if focus and not isinstance(self.main_screen.focused, (Input, Select, Checkbox)):
            result.focus()  # the player's keys act now; a field being edited keeps the focus

    def _show_frame(self, index: int) -> None:
        """The player's view: frame `index` of the shown take in the result panel."""
        take = self.takes.current
        if take is None:
            return
        result = self.main_screen.query_one("#newest-preview", FramePreview)
        result.border_title = f"Take {take.number} · {take.source}"
        kind = "context" if index < take.num_context else "new"
        state = "▶" if self.player.playing else "❚❚"
        result.show(take.video[index], f"{state} frame {index + 1}/{len(take.video)} ({kind})")

    def clear_result(self) -> None:
        """Nothing shown (a new clip is open): its takes stay in the list, labelled with their clip."""
        self.takes.current = None
        self.player.clear()
        self.frames, self.num_context, self.num_new, self.last_done = [], 0, 0, None
        self.main_screen.query_one("#filmstrip", Filmstrip).set_frames([], 0)
        result = self.main_screen.query_one("#newest-preview", FramePreview)
        result.border_title = "Newest frame"
        result.show(None)
        self._set_buttons()

    # ------------------------------------------------------------------ saving

    def save_take_dialog(self, number: int, after: Callable[[], None] | None = None) -> None:
        """Ask where to save take `number` and what (part, size); then write it on a worker thread."""
        take = self.takes.get(number)
        options = self.prefs.save_options

        def chosen(choice: SaveChoice | None) -> None:
            if choice is None:
                return
            self.prefs.save_part, self.prefs.save_size = choice.options.part, choice.options.size
            if choice.options.size == "input" and self.take_input_hw.get(take.number) is None:
                self.say(f"take {take.number} was made from nothing: no input size, saved at the model's")
            self.save_worker = self._write(take, choice.path, choice.options, after)

        title = f"Save take {take.number} · {take.source} · {take.num_new} new"
        self.push_screen(SaveScreen(str(suggested_output(take.clip)), title, options), chosen)

    def frames_for(self, take: Take, options: SaveOptions) -> np.ndarray:
        """What saving `take` with `options` writes (engine.save_options; RunError for a size it refuses)."""
        return frames_to_save(take.video, take.num_context, options, self.take_input_hw.get(take.number))

    def _write_now(self, take: Take, path: str | Path, options: SaveOptions) -> Path | None:
        """Any thread: write the take; its path, or None after showing why not (nothing else changes)."""
        try:
            written = write_video(path, self.frames_for(take, options), fps=take.fps)
        except ArdiffError as err:
            self.call_from_thread(self.show_error, one_line(err))
        except Exception as err:
            self.call_from_thread(self.show_error,
                                  f"cannot save {path}: {type(err).__name__}: {one_line(err)}")
        else:
            return written.resolve()
        return None

    @work(thread=True, group="save", exit_on_error=False, description="save")
    def _write(self, take: Take, path: str, options: SaveOptions, after: Callable[[], None] | None) -> None:
        written = self._write_now(take, path, options)
        if written is not None:
            self.call_from_thread(self._saved, take, written, after)

    def _saved(self, take: Take, path: Path, after: Callable[[], None] | None = None) -> None:
        self.takes.mark_saved(take.number, path)
        self.saved.append(path)
        self.say(f"saved take {take.number} to {path}", "green")
        self.notify(str(path), title=f"saved take {take.number}")
        if self.takes.current is take:
            self.sub_title = take.label
        if after is not None:
            after()

    async def save_unsaved(self, takes: list[Take]) -> bool:
        """The prompt's Save: each of `takes` not yet saved, at its suggested name with the remembered
        options. True when all were written (a failure is shown, and the caller then does not go on)."""
        ok = True
        for take in [t for t in takes if t.unsaved]:
            path = suggested_output(take.clip)
            written = await asyncio.to_thread(self._write_now, take, path, self.prefs.save_options)
            if written is None:
                ok = False
            else:
                self._saved(take, written)
        return ok

    def _unsaved_lines(self, takes: list[Take]) -> list[str]:
        """What Save would write where, one line per take (at most a few: the rest counted)."""
        lines = [f"take {t.number} ({t.source}, {t.num_new} new) -> {suggested_output(t.clip)}"
                 for t in takes[:4]]
        if len(takes) > 4:
            lines.append(f"and {len(takes) - 4} more, each beside its clip")
        return lines

    def ask_unsaved(self, question: str, go_on: Callable[[], object], takes: list[Take] | None = None,
                    discard: Callable[[], None] | None = None) -> None:
        """Run `go_on` at once when no take would be lost; else ask Save / Discard / Cancel first. Save
        writes them (and goes on only if all were written); Discard runs `discard`, then goes on."""
        takes = self.takes.unsaved() if takes is None else [t for t in takes if t.unsaved]
        if not takes:
            self.call_later(go_on)
            return
        if isinstance(self.screen, UnsavedScreen):
            return  # already asking

        def answered(choice: str | None) -> None:
            if choice in (None, CANCEL):
                self.say("cancelled: nothing was discarded")
                return
            if choice == SAVE:
                self.run_worker(self._save_then(takes, go_on), group="prompt", exclusive=True)
                return
            if discard is not None:
                discard()
            self.call_later(go_on)

        count = f"{len(takes)} take{'s' if len(takes) > 1 else ''}"
        prompt = UnsavedScreen(f"{question}: {count} not saved.", self._unsaved_lines(takes))
        self.push_screen(prompt, answered)

    async def _save_then(self, takes: list[Take], go_on: Callable[[], object]) -> None:
        if await self.save_unsaved(takes):
            result = go_on()
            if asyncio.iscoroutine(result):
                await result

    # ------------------------------------------------------------------ deleting

    def delete_take(self, number: int, after: Callable[[], None] | None = None) -> None:
        """Delete take `number`, asking first when it is unsaved; the neighbour is shown instead."""
        take = self.takes.get(number)

        def remove() -> None:
            now = self.takes.remove(number)
            self.take_input_hw.pop(number, None)
            self.say(f"deleted take {number}")
            if now is not None:
                self.show_take(now.number)
            else:
                self.clear_result()
            if after is not None:
                after()

        self.ask_unsaved(f"Delete take {number}", remove, [take])
