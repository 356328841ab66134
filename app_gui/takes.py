"""The window's takes part: the result on screen (playing, the filmstrip's clicks) and saving it (the whole
video, one frame, the clipboard).

A mixin of `MainWindow` (which sets up all the state): it keeps `result`, `result_marker` and `result_fps`,
and uses the window's `tabs`, `result_player`, `filmstrip`, `heatmap`, `settings`, `clip_path` and
`show_error`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QFileDialog

from app_gui.player import FramePlayer, to_qimage

SAVE_FILTERS = {"MP4 video (*.mp4)": ".mp4", "GIF animation (*.gif)": ".gif", "PNG frames (folder)": ""}


class TakesControl:
    """The result: show it, play it, save it."""

    def _set_result(self, video: np.ndarray, marker: int, fps: float) -> None:
        self.result, self.result_marker, self.result_fps = video, marker, fps
        index = self.result_player.index
        self.result_player.set_frames(list(video), fps, marker=marker)
        self.result_player.seek(min(index, len(video) - 1))
        self.filmstrip.truncate(len(video))

    def _show_result(self) -> None:
        """Redraw the player and filmstrip from `self.result` (after a run that made nothing)."""
        video = self.result if self.result is not None else []
        self.result_player.set_frames(list(video), self.result_fps, marker=self.result_marker)
        self.filmstrip.start_run([], len(video))
        self.filmstrip.num_context = self.result_marker
        for i, frame in enumerate(video):
            self.filmstrip.set_frame(i, frame)
        self.heatmap.clear()

    def _active_player(self) -> FramePlayer:
        return self.tabs.currentWidget()

    def toggle_play(self) -> None:
        self._active_player().toggle_play()

    def _filmstrip_clicked(self, index: int) -> None:
        self.tabs.setCurrentWidget(self.result_player)
        self.result_player.follow_live = False
        self.result_player.seek(index)

    def default_save_name(self, suffix: str = ".mp4") -> str:
        stem = Path(self.clip_path).stem + "_continued" if self.clip_path else "ardiff"
        folder = self.settings.save_dir or self.settings.last_dir or str(Path.home())
        return str(Path(folder) / f"{stem}{suffix}")

    def choose_save_path(self) -> None:
        if self.result is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter).")
            return
        path, chosen = QFileDialog.getSaveFileName(self, "Save the result", self.default_save_name(),
                                                   ";;".join(SAVE_FILTERS))
        if not path:
            return
        suffix = SAVE_FILTERS.get(chosen, "")
        if suffix and not Path(path).suffix:
            path += suffix
        elif not suffix and chosen in SAVE_FILTERS:
            path = str(Path(path).with_suffix(""))  # PNG frames: a folder
        self.save_result(path)

    def save_result(self, path: str | os.PathLike) -> Path | None:
        """Write the result (.mp4 / .gif, or a folder of PNG frames); None, with a dialog, on failure."""
        from engine.video_io import write_video

        if self.result is None:
            self.show_error("Nothing to save", "Generate a result first (Ctrl+Enter).")
            return None
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            out = write_video(path, self.result, fps=self.result_fps)
        except ValueError as err:  # VideoError and friends: one line for a person
            self.show_error("Cannot save", str(err))
            return None
        finally:
            QApplication.restoreOverrideCursor()
        self.settings.save_dir = str(Path(out).resolve().parent)
        self.statusBar().showMessage(f"Saved {len(self.result)} frames to {out}", 10000)
        return out

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
