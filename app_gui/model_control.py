"""The window's model part: load a checkpoint (or the embedded default, or an export folder) on a device at a
precision, in the background, and say in the status bar what runs.

A mixin of `MainWindow` (which sets up all the state): it keeps `pipeline`, `model_error`, `loading_model` and
the shown device/precision, and uses the window's `model_panel`, `params`, `status_model`, `show_error`,
`_start_task`, `is_generating`, `_refresh_clip_note`, `_params_changed`, `_update_actions` and
`_store_settings`.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QInputDialog

from app_gui.loaders import cuda_problem, cuda_unavailable, load_model
from app_gui.panels import DEVICE_LABELS, PRECISION_LABELS
from app_gui.worker import Task
from engine.hub import is_reference

CHECKPOINT_FILTER = "ardiff checkpoints (*.safetensors);;All files (*)"


class ModelControl:
    """Which model runs, where and how: loading it, and what a failed load leaves running."""

    def current_device(self) -> str:
        return self.model_panel.device()

    def current_precision(self) -> str:
        """The precision chosen in the model panel: "auto" | "fp32" | "bf16"."""
        return self.model_panel.precision()

    def load_model(self, checkpoint: str | os.PathLike, device: str, quiet: bool = False,
                   export_dir: str | None = None, precision: str | None = None) -> bool:
        """Load a model in the background ("" = embedded default). A failure keeps the model already loaded.
        `quiet` (at start-up) shows a problem beside the model instead of popping up a dialog. `export_dir`
        samples with the graphs ardiff-export made from this checkpoint. `precision` None: the panel's."""
        precision = self.current_precision() if precision is None else precision
        if self.is_generating():
            self.show_error("Busy", "Wait for the current run to finish (or cancel it) "
                                    "before changing the model.")
            return False
        if checkpoint and not is_reference(checkpoint):  # hf:/https:// references stay as typed
            checkpoint = str(Path(checkpoint).resolve())
        checkpoint = str(checkpoint or "")
        if device == "cuda":
            problem = cuda_problem()
            if problem:
                self._model_failed(problem, device, quiet)
                return False
        self.loading_model = True
        self.model_panel.show_loading((checkpoint if is_reference(checkpoint) else Path(checkpoint).name)
                                      if checkpoint else "the default model")
        self.statusBar().showMessage("Loading model…")
        self._update_actions()
        task = Task(load_model, checkpoint, device, export_dir, precision, name="ardiff-load-model")
        self._start_task(task, lambda pipe: self._model_loaded(pipe, checkpoint, device, precision),
                         lambda msg: self._model_failed(msg, device, quiet))
        return True

    def _model_loaded(self, pipe, checkpoint: str, device: str, precision: str) -> None:
        self.loading_model = False
        self.pipeline, self.model_error = pipe, None
        self.settings.checkpoint, self.settings.device = checkpoint, device
        self.settings.precision = precision
        self._device_shown, self._precision_shown = device, precision
        self.model_panel.show_model(pipe.describe())
        why = cuda_unavailable()  # torch is loaded now: asking costs nothing
        self.model_panel.set_cuda_problem(None if why is None else f"CUDA is not available: {why}")
        self.params.set_limits(pipe.window, pipe.schedule.T)
        self.params.set_num_classes(int(getattr(pipe.config.dit, "num_classes", 0) or 0))
        self.params.set_model_history_guidance(pipe.history_guidance, pipe.history_guidance_supported)
        self._update_status_model()
        self.statusBar().showMessage("Model ready", 4000)
        self._refresh_clip_note()
        self._params_changed()
        self._update_actions()
        self._store_settings()
        self.modelLoaded.emit(pipe.describe())

    def _model_failed(self, message: str, device: str, quiet: bool) -> None:
        self.loading_model = False
        if self.pipeline is None:
            self.model_error = message
            self.model_panel.show_problem(message)
        else:
            self.model_panel.show_model(self.pipeline.describe())
        self.model_panel.select_device(self._device_shown)  # the choice that failed is not what is running
        self.model_panel.select_precision(self._precision_shown)
        self._update_status_model()
        self._update_actions()
        self.modelFailed.emit(message)
        if quiet:
            self.statusBar().showMessage(message, 15000)
        else:
            self.show_error("Cannot load the model", message)

    def _update_status_model(self) -> None:
        if self.pipeline is None:
            device = DEVICE_LABELS.get(self.current_device(), "?")
            precision = PRECISION_LABELS.get(self.current_precision(), "?")
            self.status_model.setText(f"Model: none · Device: {device} · Precision: {precision}")
            return
        cfg = self.pipeline.config
        name = self.pipeline.checkpoint.path.name if self.pipeline.checkpoint.path else cfg.name
        dtype = self.pipeline.autocast_dtype  # what runs, which "auto" (or an export) decided
        precision = "float32" if dtype is None else str(dtype).removeprefix("torch.")
        self.status_model.setText(f"Model: {name} ({cfg.name}, {self.pipeline.resolution}px) · "
                                  f"Device: {self.pipeline.device} · {precision}")

    def choose_checkpoint(self) -> None:
        ckpt = self.settings.checkpoint
        start = str(Path(ckpt).parent) if ckpt and not is_reference(ckpt) else self.settings.last_dir
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", start, CHECKPOINT_FILTER)
        if path:
            self.load_model(path, self.current_device())

    def choose_checkpoint_reference(self) -> None:
        """Load a checkpoint by reference (engine.hub): fetched once into a cache, in the background."""
        ckpt = self.settings.checkpoint
        text, ok = QInputDialog.getText(self, "Checkpoint from the Hub or a URL",
                                        "hf:OWNER/REPO[/FILE][@REVISION] or https://…[#sha256=…]",
                                        text=ckpt if is_reference(ckpt) else "")
        if ok and text.strip():
            self.load_model(text.strip(), self.current_device())

    def choose_export_dir(self) -> None:
        ckpt = self.settings.checkpoint
        start = str(Path(ckpt).parent) if ckpt and not is_reference(ckpt) else self.settings.last_dir
        path = QFileDialog.getExistingDirectory(self, "Open an ardiff-export folder", start)
        if path:
            self.load_model(ckpt, self.current_device(), export_dir=path)
