"""The window's clip part: open a clip (dialog, recent list, drag and drop, command line), read it in the
background, and show it as the input.

A mixin of `MainWindow` (which sets up all the state): it keeps `clip`, `clip_path`, `clip_fps` and the
recent-files menu, and uses the window's `settings`, `input_player`, `tabs`, `params`, `pipeline`,
`recent_menu`, `show_error`, `_start_task`, `is_generating`, `load_model`, `current_device`,
`_params_changed`, `_update_actions` and `_store_settings`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QFileDialog

from app_gui.controls import MODE_CONTINUE
from app_gui.loaders import read_clip
from app_gui.worker import Task

OPEN_BUSY = "A clip cannot be opened while a run is going: Esc cancels the run (its frames become a take)"
from engine.run import frame_rate
from engine.video_io import CLIP_EXTENSIONS

CLIP_FILTER = f"Videos and images ({' '.join('*' + e for e in sorted(CLIP_EXTENSIONS))});;All files (*)"


class ClipControl:
    """The input clip: where it comes from, and what the model will see of it."""

    def choose_clip(self) -> None:
        """Open (Ctrl+O): during a run, say why not; with unsaved takes, ask first; then the file dialog."""
        if self.is_generating():
            self.statusBar().showMessage(OPEN_BUSY, 10000)
            return
        if not self.confirm_unsaved("opening another clip"):
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a clip", self.settings.last_dir, CLIP_FILTER)
        if path:
            self.open_clip(path, asked=True)

    def open_clip(self, path: str | os.PathLike, asked: bool = False) -> bool:
        """Read a clip in the background; the clip on screen stays until the new one is read. Unsaved takes
        ask Save / Discard / Cancel first (unless `asked` already); the takes kept stay in the list, named
        by their clip, and the result view clears for the new clip."""
        path = str(path)
        if self.is_generating():
            self.statusBar().showMessage(OPEN_BUSY, 10000)
            self.show_error("Busy", OPEN_BUSY)
            return False
        if not asked and not self.confirm_unsaved("opening another clip"):
            return False
        self.statusBar().showMessage(f"Opening {Path(path).name}…")
        task = Task(read_clip, path, name="ardiff-read-clip")
        self._start_task(task, lambda res: self._clip_read(path, *res),
                         lambda msg: self._clip_failed(path, msg))
        return True

    def set_clip(self, frames: np.ndarray, fps: float, name: str, path: str | None = None) -> None:
        """Use in-memory frames as the input clip (also how a read clip arrives)."""
        self.clip, self.clip_fps, self.clip_path = frames, fps, path
        self.input_player.set_frames(frames, fps)
        self._show_take(None)  # a result of another clip is never shown (or saved) under this clip's name
        self.tabs.setCurrentWidget(self.input_player)
        self.params.mode.setCurrentIndex(MODE_CONTINUE)
        self.setWindowTitle(name)  # shown as "NAME — ardiff": Qt appends the application display name
        self._refresh_context_shade()
        self._refresh_clip_note()
        self._params_changed()
        self._update_actions()

    def _clip_read(self, path: str, frames: np.ndarray, fps: float, truncated: bool) -> None:
        self.set_clip(frames, fps, Path(path).name, path)
        self.settings.add_recent(path)
        self.settings.last_dir = str(Path(path).resolve().parent)
        self._update_recent_menu()
        h, w = frames.shape[1:3]
        msg = f"Opened {Path(path).name}: {len(frames)} frames, {w}x{h}, {frame_rate(fps)}"
        if truncated:
            msg += (f" (long clip: only the first {len(frames)} frames are loaded; "
                    f"the continuation follows them)")
        self.statusBar().showMessage(msg, 10000)
        self._store_settings()
        self.clipLoaded.emit(path)

    def _clip_failed(self, path: str, message: str) -> None:
        if not Path(path).exists() and str(Path(path).resolve()) in self.settings.recent:
            self.settings.recent.remove(str(Path(path).resolve()))
            self._update_recent_menu()
        self.show_error("Cannot open the clip", message)

    def _refresh_context_shade(self) -> None:
        if self.clip is None or self.params.generate_mode:
            self.input_player.set_shade(None)
            return
        n, c = len(self.clip), self.params.context.value()
        self.input_player.set_shade((max(0, n - c), n))

    def _refresh_clip_note(self) -> None:
        if self.clip is None or self.pipeline is None:
            return
        note = self.pipeline.fit_note(self.clip[:1])
        if note:
            self.input_player.setToolTip(f"For the model, frames are {note}")

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent:
            act = self.recent_menu.addAction(Path(path).name)
            act.setToolTip(path)
            act.setStatusTip(path)
            act.triggered.connect(lambda _=False, p=path: self.open_clip(p))
        if self.settings.recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)
        self.recent_menu.setEnabled(bool(self.settings.recent))

    def _clear_recent(self) -> None:
        self.settings.recent = []
        self._update_recent_menu()

    # -- drag and drop: a clip, a frame folder, or a checkpoint

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            return
        event.acceptProposedAction()
        self.open_path(paths[0])

    def open_path(self, path: str) -> None:
        """A dropped or command-line path: checkpoints load as the model, anything else as a clip."""
        if path.lower().endswith(".safetensors"):
            self.load_model(path, self.current_device())
        else:
            self.open_clip(path)
