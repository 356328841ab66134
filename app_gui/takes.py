"""The window's takes part: every run's result is a take (`engine.takes`); show one, compare two, delete, and
save any (the whole video, one frame, the clipboard), asking before unsaved takes could be lost.

A mixin of `MainWindow` (which sets up all the state): it keeps `takes` and uses the window's `tabs`,
`result_player`, `compare_view`, `compare_tab`, `takes_panel`, `filmstrip`, `heatmap`, `settings`,
`ask_unsaved`, `is_generating`, `show_error` and `_update_actions`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QDialog, QFileDialog, QMessageBox

from app_gui import prompts
from app_gui.player import FramePlayer, to_qimage
from app_gui.run_control import GENERATE_FPS
from app_gui.save_dialog import SaveDialog
from engine.save_options import SaveOptions, frames_to_save, suggested_output
from engine.takes import Take

Button = QMessageBox.StandardButton


class TakesControl:
    """The session's takes: on screen, compared, deleted, saved."""

    # -- the take on screen ---------------------------------------------------------------------------------

    @property
    def result(self) -> np.ndarray | None:
        """The take on screen: the whole video, context first (None when none is shown)."""
        return None if self.takes.current is None else self.takes.current.video

    @property
    def result_marker(self) -> int:
        return 0 if self.takes.current is None else self.takes.current.num_context

    @property
    def result_fps(self) -> float:
        return GENERATE_FPS if self.takes.current is None else self.takes.current.fps

    def _add_take(self, video: np.ndarray, marker: int, fps: float, clip, request, parent: int | None = None,
                  cancelled: bool = False, input_hw: tuple[int, int] | None = None) -> Take:
        take = self.takes.add(video, marker, fps, clip, request, parent=parent, cancelled=cancelled,
                              input_hw=input_hw)
        self._show_take(take, keep_schedule=True)  # the heat map still shows the run that made it
        return take

    def _show_take(self, take: Take | None, keep_schedule: bool = False) -> None:
        """Show `take` in the Result tab, filmstrip and list (None: an empty result view). During a run the
        Result tab shows the run: only the list follows."""
        self.takes.current = take
        if self.is_generating():
            self._refresh_takes()
            return
        video = [] if take is None else list(take.video)
        marker = 0 if take is None else take.num_context
        index = self.result_player.index
        self.result_player.set_frames(video, self.result_fps, marker=marker)
        self.result_player.seek(min(index, len(video) - 1))
        self.filmstrip.start_run([], len(video))
        self.filmstrip.num_context = marker
        for i, frame in enumerate(video):
            self.filmstrip.set_frame(i, frame)
        if not keep_schedule:
            self.heatmap.clear()
        self._refresh_takes()

    def _refresh_takes(self) -> None:
        self.takes_panel.set_takes(self.takes, self.takes.current)
        self._update_actions()

    def select_take(self, number: int) -> None:
        """Put take `number` on screen (a click in the list)."""
        if self.is_generating():  # the Result tab is showing the run
            self.statusBar().showMessage("The run on screen is not finished: Esc cancels it", 6000)
            return
        self._show_take(self.takes.select(number))
        self.tabs.setCurrentWidget(self.result_player)

    def compare_takes(self, a: int, b: int) -> None:
        """Play takes `a` and `b` side by side in the Compare tab."""
        self.compare_view.set_takes(self.takes.get(a), self.takes.get(b))
        self.tabs.setCurrentWidget(self.compare_tab)

    def delete_take(self, number: int) -> bool:
        """Delete take `number`; an unsaved one only after Save / Discard (Cancel keeps it)."""
        take = self.takes.get(number)
        if take.unsaved and self.ask_unsaved:
            answer = prompts.ask_unsaved(self, [take], "deleting it")
            if answer == Button.Cancel or (answer == Button.Save and self.choose_save_path(number) is None):
                return False
        shown = self.takes.current
        self.takes.remove(number)
        if shown is not None and shown.number != number:
            self.takes.current = shown  # deleting another take leaves the one on screen
        if self.compare_view.takes and number in (t.number for t in self.compare_view.takes):
            self.compare_view.a.clear()
            self.compare_view.b.clear()
            self.compare_view.takes = None
        self._show_take(self.takes.current)
        self.statusBar().showMessage(f"Deleted take {number}", 4000)
        return True

    def confirm_unsaved(self, doing: str) -> bool:
        """Before quitting or opening another clip: with unsaved takes, ask Save / Discard / Cancel. Save
        saves each (one dialog per take), Discard deletes them; False when the person cancelled."""
        unsaved = self.takes.unsaved()
        if not unsaved or not self.ask_unsaved:
            return True
        answer = prompts.ask_unsaved(self, unsaved, doing)
        if answer == Button.Save:
            return all(self.choose_save_path(take.number) is not None for take in unsaved)
        if answer == Button.Discard:
            for take in unsaved:
                self.takes.remove(take.number)
            self._show_take(self.takes.current)
            return True
        return False

    def _active_player(self) -> FramePlayer:
        widget = self.tabs.currentWidget()
        return widget if isinstance(widget, FramePlayer) else self.compare_view.driver

    def toggle_play(self) -> None:
        self._active_player().toggle_play()

    def _filmstrip_clicked(self, index: int) -> None:
        self.tabs.setCurrentWidget(self.result_player)
        self.result_player.follow_live = False
        self.result_player.seek(index)

    # -- saving ---------------------------------------------------------------------------------------------

    def default_save_name(self, take: Take | None = None, suffix: str = ".mp4") -> str:
        """Where a take is saved unless the person says otherwise: `<its clip>_continued.mp4` beside its clip
        (engine.save_options.suggested_output); a take from nothing goes to the last save folder."""
        take = self.takes.current if take is None else take
        clip = None if take is None else take.clip
        folder = None if clip is not None else (self.settings.save_dir or str(Path.home()))
        return str(suggested_output(clip, folder, suffix))

    def save_options(self) -> SaveOptions:
        """The last save's choices (kept in the settings)."""
        return SaveOptions(self.settings.save_part, self.settings.save_size)

    def choose_save_path(self, number: int | None = None) -> Path | None:
        """The save dialog for take `number` (default: the one on screen); the saved path, or None."""
        take = self.takes.current if number is None else self.takes.get(number)
        if take is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter), or pick a take.")
            return None
        dialog = SaveDialog(self, take, Path(self.default_save_name(take)), self.save_options())
        while True:
            if dialog.exec() != QDialog.DialogCode.Accepted:
                return None
            path, options = dialog.choice()
            if not path.exists() or QMessageBox.question(
                    self, "Replace?", f"{path} exists. Replace it?") == Button.Yes:
                break
        self.settings.save_part, self.settings.save_size = options.part, options.size
        return self.save_take(take, path, options)

    def save_take(self, take: Take, path: str | os.PathLike, options: SaveOptions | None = None) -> Path | None:
        """Write `take` (.mp4 / .gif, or a folder of PNG frames) as `options` say; None, with a dialog, on
        failure. A saved take is marked saved."""
        from engine.video_io import write_video

        options = self.save_options() if options is None else options
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            frames = frames_to_save(take.video, take.num_context, options, take.input_hw)
            out = write_video(path, frames, fps=take.fps)
        except ValueError as err:  # VideoError, RunError and friends: one line for a person
            self.show_error("Cannot save", str(err))
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.takes.mark_saved(take.number, out)
        self.settings.save_dir = str(Path(out).resolve().parent)
        self._refresh_takes()
        self.statusBar().showMessage(f"Saved take {take.number}: {len(frames)} frames to {out}", 10000)
        return out

    def save_result(self, path: str | os.PathLike, options: SaveOptions | None = None) -> Path | None:
        """Save the take on screen to `path` (no dialog)."""
        if self.takes.current is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter), or pick a take.")
            return None
        return self.save_take(self.takes.current, path, options)

    def current_frame(self) -> np.ndarray | None:
        return self._active_player().current_frame()

    def copy_frame(self) -> bool:
        """Put the frame on screen on the clipboard as an image."""
        frame = self.current_frame()
        if frame is None:
            self.show_error("Nothing to copy", "There is no frame on screen yet.")
            return False
        QGuiApplication.clipboard().setImage(to_qimage(frame))
        self.statusBar().showMessage(f"Copied frame {self._active_player().index} to the clipboard", 4000)
        return True

    def choose_frame_path(self) -> None:
        frame = self.current_frame()
        if frame is None:
            self.show_error("Nothing to save", "There is no frame on screen yet.")
            return
        name = f"frame_{self._active_player().index:04d}.png"
        folder = self.settings.save_dir or self.settings.last_dir or str(Path.home())
        path, _ = QFileDialog.getSaveFileName(self, "Save frame", str(Path(folder) / name),
                                              "PNG image (*.png)")
        if path and not to_qimage(frame).save(path if path.lower().endswith(".png") else path + ".png"):
            self.show_error("Cannot save", f"{path}: could not write the image")
