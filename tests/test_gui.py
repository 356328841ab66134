"""The desktop app, offscreen (conftest sets QT_QPA_PLATFORM): open a clip, generate with a tiny random
checkpoint, watch frames arrive, cancel, save and read back, and every error path ending in a dialog."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

try:
    from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
    from PySide6.QtGui import QDropEvent, QGuiApplication, QImage, QKeySequence
except ImportError:  # the gui extra is not installed
    pytest.skip("PySide6 is not installed (pip install 'ardiff[gui]')", allow_module_level=True)

from app_gui.heatmap import schedule_levels
from app_gui.settings import Settings, config_path
import app_gui.model_control as model_mod  # noqa: E402
import app_gui.window as window_mod  # noqa: E402
from app_gui.window import MainWindow
import engine.device as device_mod
from engine.pipeline import Done, FrameReady, Progress
from engine.video_io import list_frame_files, read_video, write_video

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
WAIT = 30_000  # ms; generous for two busy cores, the runs themselves take well under a second


@pytest.fixture(autouse=True)
def _gc_on_gui_thread(qapp):
    """As in the app: garbage (old windows, finished tasks) is collected on the GUI thread, never by a
    worker thread that happens to allocate (which would destroy Qt objects off their thread)."""
    from app_gui.gc_guard import MainThreadGC

    guard = MainThreadGC().start()
    yield
    guard.stop()


@pytest.fixture(autouse=True)
def _private_config(tmp_path, monkeypatch):
    """Settings go to a temp folder, and the default model points nowhere: tests never touch the user's
    config, never read /work/shared, and behave the same whether or not the real weights exist."""
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *a, **k: str(tmp_path / "config"))
    monkeypatch.setenv("ARDIFF_CHECKPOINT", str(tmp_path / "no-such-default.safetensors"))


@pytest.fixture
def make_window(qtbot, tiny_checkpoint):
    def make(checkpoint=tiny_checkpoint, **kw) -> MainWindow:
        w = MainWindow(Settings.load(), checkpoint=str(checkpoint) if checkpoint else None, device="cpu",
                       **kw)
        w.ask_unsaved = False  # the prompts' own tests turn it on; elsewhere closing must not wait for a click
        qtbot.addWidget(w)
        qtbot.waitUntil(lambda: not w.loading_model, timeout=WAIT)
        return w
    return make


def open_clip(qtbot, w: MainWindow, path) -> None:
    with qtbot.waitSignal(w.clipLoaded, timeout=WAIT):
        assert w.open_clip(path)


def set_params(w: MainWindow, s: int, new: int, steps: int, context: int, seed: int = 0) -> None:
    p = w.params
    p.steps.setValue(steps)
    p.s_spin.setValue(s)
    p.new_frames.setValue(new)
    p.context.setValue(context)
    p.seed.setValue(seed)


def run(qtbot, w: MainWindow, start=None) -> tuple[list, Done]:
    """Generate (or `start()`), collect the events the window showed, return them and the Done."""
    events: list = []
    w.eventReceived.connect(events.append)
    with qtbot.waitSignal(w.generationFinished, timeout=WAIT) as blocker:
        assert (start or w.generate)(), w.errors
    w.eventReceived.disconnect(events.append)
    return events, blocker.args[0]


def show_active(qtbot, w: MainWindow) -> None:
    """Shortcuts only reach the active window."""
    with qtbot.waitActive(w, timeout=WAIT):
        w.show()
        w.activateWindow()


def close_dialogs(w: MainWindow) -> None:
    if w.last_dialog is not None:
        w.last_dialog.close()


def choose(qtbot, combo, value: str, signal) -> list:
    """Pick `value` in a combo as a person does (`activated`), wait for `signal` and return its args."""
    combo.setCurrentIndex(combo.findData(value))
    with qtbot.waitSignal(signal, timeout=WAIT) as blocker:
        combo.activated.emit(combo.currentIndex())
    return blocker.args


def native_bf16(monkeypatch, native: bool) -> None:
    """Pretend this CPU has (or lacks) native bfloat16, so "auto" would pick the other precision than the
    one a test chooses: the choice, not the machine, must decide."""
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: native)


# --------------------------------------------------------------------------- the main path


def test_continue_demo_clip_live_frames_heatmap_and_save(qtbot, make_window, tmp_path):
    w = make_window()
    assert w.pipeline is not None and w.errors == []
    assert "tiny" in w.status_model.text() and "cpu" in w.status_model.text()
    open_clip(qtbot, w, DEMO)
    assert w.clip.shape == (32, 144, 176, 3) and w.input_player.slider.maximum() == 31
    set_params(w, s=3, new=6, steps=20, context=4)  # 35 rows: long enough to watch the event loop
    assert w.input_player.slider.shade == (28, 32)  # the context frames the model will see

    # A timer on the GUI thread must keep firing while the worker samples.
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(5)
    events, done = run(qtbot, w)
    timer.stop()

    frames = [e for e in events if isinstance(e, FrameReady)]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [f.index for f in frames] == [4, 5, 6, 7, 8, 9]  # context first, then the new frames in order
    assert not done.cancelled and done.num_context == 4 and done.video.shape == (10, 16, 16, 3)
    assert len(ticks) >= 5, f"event loop starved: {len(ticks)} timer ticks during {len(progress)} rows"
    assert max(np.diff(ticks)) < 1.0  # never a frozen second

    # Filmstrip and player: every slot filled, the first new frame marked.
    assert w.filmstrip.count() == 10 and w.filmstrip.num_filled == 10 and w.filmstrip.num_new == 6
    assert len(w.result_player.frames) == 10 and w.result_player.marker == 4
    assert w.result_player.slider.marker == 4 and w.result_player.counter.text().endswith("/ 10")
    assert np.array_equal(w.result, done.video)
    assert np.array_equal(w.result[7], frames[3].image)
    assert w.run_panel.progress.value() == 6 and w.run_panel.progress.maximum() == 6

    # Heat map: the planned schedule is what ran, and it ends on the last row with every frame clean.
    plan = schedule_levels(6, 4, 20, 3, w.pipeline.window)
    assert progress[-1].total_rows == len(plan) - 1
    for event in progress:
        assert np.array_equal(event.levels, plan[event.row])
    assert w.heatmap.row == len(plan) - 1 and not w.heatmap.current_levels.any()

    # Save as MP4, GIF and PNG frames; each reads back with every frame.
    assert len(read_video(w.save_result(tmp_path / "out.mp4"))) == 10
    assert len(read_video(w.save_result(tmp_path / "out.gif"))) == 10
    assert len(list_frame_files(w.save_result(tmp_path / "frames"))) == 10

    # Copy the frame on screen to the clipboard.
    w.result_player.seek(7)
    assert w.copy_frame()
    image = QGuiApplication.clipboard().image()
    assert (image.width(), image.height()) == (16, 16)
    pixel = image.convertToFormat(QImage.Format.Format_RGB888).pixelColor(3, 5)
    assert pixel.red() == frames[3].image[5, 3, 0]
    assert w.errors == []


def test_cancel_midway_keeps_frames_and_window_usable(qtbot, make_window, tmp_path):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=40, new=16, steps=40, context=3)  # frame by frame: hundreds of rows, seconds of work
    show_active(qtbot, w)
    with qtbot.waitSignal(w.generationFinished, timeout=WAIT) as blocker:
        qtbot.keyClick(w.params.seed, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Enter
        assert w.is_generating()
        assert not w.run_panel.generate_button.isEnabled() and w.run_panel.cancel_button.isEnabled()
        assert not w.params.isEnabled()  # parameters are locked while they are in use
        qtbot.waitUntil(lambda: w.filmstrip.num_new >= 2, timeout=WAIT)
        qtbot.keyClick(w.result_player, Qt.Key.Key_Escape)
    done = blocker.args[0]
    made = len(done.video) - done.num_context
    assert done.cancelled and 2 <= made < 16
    assert len(w.result) == 3 + made and w.filmstrip.count() == len(w.result)  # no empty slots left
    assert w.result_player.available == len(w.result_player.frames) == len(w.result)
    assert "Cancelled" in w.run_panel.label.text()
    run = w.run_panel
    assert run.generate_button.isEnabled() and run.save_button.isEnabled()
    assert not run.cancel_button.isEnabled()
    assert len(read_video(w.save_result(tmp_path / "partial.mp4"))) == 3 + made
    assert w.errors == []


def test_continue_further_appends_to_the_result(qtbot, make_window):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=2, new=3, steps=4, context=4)
    run(qtbot, w)
    first = w.result.copy()
    assert len(first) == 7
    w.params.new_frames.setValue(2)
    events, done = run(qtbot, w, w.continue_further)
    # Context = the last 4 frames of the result; the whole video grows by 2 and keeps its old frames.
    assert done.num_context == 4 and [e.index for e in events if isinstance(e, FrameReady)] == [4, 5]
    assert len(w.result) == 9 and np.array_equal(w.result[:7], first)
    assert w.result_marker == 4 and w.filmstrip.count() == 9


def test_generate_from_nothing_with_a_class(qtbot, make_window, tmp_path):
    from engine.checkpoint import save_checkpoint
    from engine.models import build_models, get_preset

    cfg = get_preset("tiny")
    cfg.dit.num_classes = 3
    vae, dit = build_models(cfg)
    ckpt = save_checkpoint(tmp_path / "classes.safetensors", vae, dit, cfg)
    w = make_window(ckpt)
    assert w.params.class_label.isVisibleTo(w) and w.params.class_label.maximum() == 2
    w.params.mode.setCurrentIndex(1)  # generate from nothing: no clip needed
    w.params.class_label.setValue(2)
    w.params.guidance.setValue(2.0)
    set_params(w, s=1, new=3, steps=3, context=4)
    events, done = run(qtbot, w)
    assert done.num_context == 0 and [e.index for e in events if isinstance(e, FrameReady)] == [0, 1, 2]
    assert w.result.shape == (3, 16, 16, 3) and w.result_marker == 0


# ------------------------------------------------------------------------ bad input: a dialog, nothing lost


def test_errors_become_dialogs_and_lose_nothing(qtbot, make_window, tmp_path, monkeypatch):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=2, steps=2, context=2)
    run(qtbot, w)
    result, pipeline = w.result.copy(), w.pipeline

    def expect_error(title_part: str, trigger) -> str:
        with qtbot.waitSignal(w.errorShown, timeout=WAIT) as blocker:
            trigger()
        title, message = blocker.args
        assert title_part in title
        assert w.last_dialog.isVisible() and message in w.last_dialog.text()  # shown, not blocking
        close_dialogs(w)
        return message

    text = tmp_path / "notes.txt"
    text.write_text("not a video at all\n" * 20)
    assert "notes.txt" in expect_error("clip", lambda: w.open_clip(text))
    assert w.clip.shape[0] == 32  # the demo clip stays loaded

    short = write_video(tmp_path / "short.mp4", read_video(DEMO, max_frames=3), fps=8)
    open_clip(qtbot, w, short)
    assert w.result is None and len(w.takes) == 1  # the new clip shows no result; the take is kept

    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 100)
    assert "corrupt.safetensors" in expect_error("model", lambda: w.load_model(bad, "cpu"))
    assert w.pipeline is pipeline  # the working model stays

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    combo = w.model_panel.device_combo
    combo.setCurrentIndex(combo.findData("cuda"))  # as a person picking CUDA in the list
    assert "CUDA" in expect_error("model", lambda: combo.activated.emit(combo.currentIndex()))
    assert w.current_device() == "cpu" and w.pipeline is pipeline  # the choice that failed is undone

    assert np.array_equal(w.takes.get(1).video, result)  # nothing generated was lost
    w.params.context.setValue(2)
    _, done = run(qtbot, w)  # and the window still works
    assert len(done.video) == 4 and len(w.takes) == 2


def test_failure_mid_stream_keeps_the_frames_made(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=5, steps=3, context=2)
    run(qtbot, w)
    first = w.result.copy()
    real = w.pipeline.run

    def failing(after: int):
        def run(*args, **kwargs):
            def stream():
                made = 0
                for event in real(*args, **kwargs):
                    if made == after:
                        raise RuntimeError("CUDA out of memory")
                    yield event
                    made += isinstance(event, FrameReady)
            return stream()
        return run

    def fails(title_part: str) -> str:
        with qtbot.waitSignal(w.errorShown, timeout=WAIT) as blocker:
            assert w.generate()
        qtbot.waitUntil(lambda: not w.is_generating(), timeout=WAIT)
        close_dialogs(w)
        assert title_part in blocker.args[0]
        return blocker.args[1]

    # Fails before any new frame: the previous result stays, on screen too.
    monkeypatch.setattr(w.pipeline, "run", failing(after=0))
    assert "out of memory" in fails("Generation failed").lower()
    assert np.array_equal(w.result, first) and w.filmstrip.count() == len(first) == 7
    assert len(w.result_player.frames) == 7 and w.result_player.available == 7

    # Fails after two new frames: those two are kept (with their context) and can be saved.
    monkeypatch.setattr(w.pipeline, "run", failing(after=2))
    fails("Generation failed")
    assert w.result.shape == (4, 16, 16, 3) and w.filmstrip.count() == 4  # 2 context + the 2 made
    assert len(w.takes) == 2 and w.takes.current.cancelled and np.array_equal(w.takes.get(1).video, first)
    assert len(read_video(w.save_result(tmp_path / "kept.gif"))) == 4
    assert w.run_panel.generate_button.isEnabled()


def test_missing_default_model_explains_and_offers_a_checkpoint(qtbot, make_window):
    w = make_window(checkpoint=None)  # ARDIFF_CHECKPOINT points to a missing file
    assert w.pipeline is None and w.errors == []  # at start-up: said beside the model, no pop-up
    warning = w.model_panel.warning
    assert w.model_error and warning.isVisibleTo(w) and "Open checkpoint" in warning.text()
    w.params.mode.setCurrentIndex(1)
    with qtbot.waitSignal(w.errorShown, timeout=WAIT) as blocker:
        assert not w.generate()
    assert w.model_error in blocker.args[1]
    close_dialogs(w)
    assert w.act_open_export.isEnabled() and "ardiff-export" in w.act_open_export.toolTip()


# --------------------------------------------------------------------------- files, settings, shortcuts


def drop(w: MainWindow, path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    w.dropEvent(QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                           Qt.KeyboardModifier.NoModifier))


def test_drop_a_clip_or_a_checkpoint_and_recent_files(qtbot, make_window, tiny_checkpoint):
    w = make_window(checkpoint=None)
    assert w.pipeline is None
    with qtbot.waitSignal(w.clipLoaded, timeout=WAIT):
        drop(w, DEMO)
    assert w.clip is not None and len(w.clip) == 32
    assert w.settings.recent == [str(DEMO.resolve())]
    assert w.recent_menu.actions()[0].text() == "demo.mp4"
    with qtbot.waitSignal(w.modelLoaded, timeout=WAIT):
        drop(w, tiny_checkpoint)  # a model file dropped on the window becomes the model
    assert w.pipeline is not None and w.settings.checkpoint == str(Path(tiny_checkpoint).resolve())


def test_shortcuts(qtbot, make_window):
    w = make_window()
    assert QKeySequence(QKeySequence.StandardKey.Open) in w.act_open.shortcuts()
    assert QKeySequence(QKeySequence.StandardKey.Save) in w.act_save.shortcuts()
    assert {QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")} <= set(w.act_generate.shortcuts())
    w.set_clip(read_video(DEMO, max_frames=4), 8.0, "four frames")
    show_active(qtbot, w)
    # A clicked button keeps no focus, so Space is always play/pause, never "press Generate again".
    qtbot.mouseClick(w.run_panel.save_button, Qt.MouseButton.LeftButton)
    w.input_player.slider.setFocus()
    qtbot.keyClick(w.input_player.slider, Qt.Key.Key_Space)
    assert w.input_player.playing and not w.is_generating()
    qtbot.waitUntil(lambda: w.input_player.index == 3, timeout=WAIT)  # it really plays
    qtbot.keyClick(w.input_player.slider, Qt.Key.Key_Space)
    assert not w.input_player.playing


def test_settings_round_trip(qtbot, make_window, tmp_path):
    assert config_path().is_relative_to(tmp_path)  # platformdirs is redirected
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=7, new=21, steps=30, context=5, seed=1234)
    w.close()
    st = Settings.load()
    assert (st.s, st.new_frames, st.steps, st.context, st.seed, st.device) == (7, 21, 30, 5, 1234, "cpu")
    assert st.recent == [str(DEMO.resolve())] and st.last_dir == str(DEMO.resolve().parent)
    w2 = make_window(checkpoint=None)  # the saved checkpoint (tiny) is used again
    assert w2.pipeline is not None and w2.params.s_spin.value() == 7 and w2.params.seed.value() == 1234
    assert w2.recent_menu.actions()[0].text() == "demo.mp4"
    config_path().write_text("{ not json")
    assert Settings.load().steps == Settings().steps  # a damaged file gives defaults, not a crash


def test_screenshot_cli_writes_png(qapp, tmp_path):
    from app_gui.main import SCREENSHOT_SIZE, main

    out = tmp_path / "shot.png"
    assert main(["--screenshot", str(out), str(DEMO)]) == 0
    image = QImage(str(out))
    assert (image.width(), image.height()) == SCREENSHOT_SIZE
    assert not config_path().exists()  # screenshots never change the saved settings


def test_screenshot_mid_generation(qapp, tmp_path, tiny_checkpoint, capsys):
    from app_gui.main import main

    out = tmp_path / "mid.png"
    args = ["--screenshot", str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
            "--mid-generation", "--frames", "4", str(DEMO)]
    assert main(args) == 0, capsys.readouterr().err
    assert QImage(str(out)).width() > 0
    assert main(["--screenshot", str(tmp_path / "bad.png"), str(DEMO.with_suffix(".txt"))]) == 2
    assert "no such file" in capsys.readouterr().err


def test_sampling_with_an_export_dir(qtbot, make_window, tiny_checkpoint, tmp_path, monkeypatch):
    """Model > Open export dir: the pipeline runs the exported graphs (ONNX: the quickest export here)."""
    from engine.backends.export import export

    out = tmp_path / "onnx"
    export(tiny_checkpoint, out, "onnx", device="cpu", dtype="fp32", log=lambda _: None)
    w = make_window()
    choose(qtbot, w.model_panel.precision_combo, "bf16", w.modelLoaded)  # not what the graphs were made in
    monkeypatch.setattr(model_mod.QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    with qtbot.waitSignal(w.modelLoaded, timeout=WAIT) as blocker:
        w.act_open_export.trigger()
    assert "backend onnx" in blocker.args[0]
    assert w.pipeline.autocast_dtype is None and w.errors == []  # the export decides: float32
    assert w.model_panel.precision() == "bf16"  # the choice stays, for the next checkpoint
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=3, steps=2, context=2)
    events, done = run(qtbot, w)
    assert len(done.video) == 5 and w.pipeline.exported.dit.runner.calls > 0
    other = tmp_path / "not-an-export"
    other.mkdir()
    monkeypatch.setattr(model_mod.QFileDialog, "getExistingDirectory", lambda *a, **k: str(other))
    with qtbot.waitSignal(w.errorShown, timeout=WAIT) as blocker:
        w.act_open_export.trigger()
    assert "not an ardiff export" in blocker.args[1]
    assert "backend onnx" in w.pipeline.describe()  # the loaded model stays


# --------------------------------------------------------------------------- precision


def test_precision_choice_reloads_the_model_and_is_kept(qtbot, make_window, monkeypatch):
    import torch

    from app_gui.loaders import load_model

    native_bf16(monkeypatch, True)
    w = make_window()
    panel = w.model_panel
    assert panel.precision() == "auto" and w.pipeline.autocast_dtype == torch.bfloat16
    combo = panel.precision_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["Auto", "float32", "bfloat16"]
    assert "natively" in combo.toolTip() and "same result on every machine" in combo.toolTip()

    (description,) = choose(qtbot, combo, "fp32", w.modelLoaded)
    assert w.pipeline.autocast_dtype is None and "cpu, float32" in description
    assert w.status_model.text().endswith("· float32") and w.settings.precision == "fp32"

    native_bf16(monkeypatch, False)
    choose(qtbot, combo, "bf16", w.modelLoaded)
    assert w.pipeline.autocast_dtype == torch.bfloat16 and "bfloat16 autocast" in panel.label.text()
    assert w.status_model.text().endswith("· bfloat16") and w.settings.precision == "bf16"

    # A reload that fails: the model that runs stays, and so does the combo's choice.
    def broken(*args):
        raise ValueError("cannot load at this precision")

    pipeline = w.pipeline
    monkeypatch.setattr(model_mod, "load_model", broken)
    title, message = choose(qtbot, combo, "fp32", w.errorShown)
    close_dialogs(w)
    assert "model" in title and "cannot load at this precision" in message
    assert w.pipeline is pipeline and panel.precision() == "bf16" and w.settings.precision == "bf16"
    monkeypatch.setattr(model_mod, "load_model", load_model)

    w.close()
    assert Settings.load().precision == "bf16"
    w2 = make_window(checkpoint=None)  # the saved checkpoint, at the saved precision ("auto" is float32 now)
    assert w2.model_panel.precision() == "bf16" and w2.pipeline.autocast_dtype == torch.bfloat16


def test_unknown_stored_precision_falls_back_to_auto(qtbot, make_window, monkeypatch):
    native_bf16(monkeypatch, False)
    w = make_window()
    w.close()
    data = json.loads(config_path().read_text())
    for bad in ("fp16", 16, None):
        data["precision"] = bad
        config_path().write_text(json.dumps(data))
        assert Settings.load().precision == "auto", bad
    data["precision"] = "fp32"
    config_path().write_text(json.dumps(data))
    assert Settings.load().precision == "fp32"  # a good value is read back
    data["precision"] = "fp16"
    config_path().write_text(json.dumps(data))
    w2 = make_window()
    assert w2.model_panel.precision() == "auto" and w2.pipeline.autocast_dtype is None


def test_precision_option_reaches_the_window(qapp, qtbot, tmp_path, tiny_checkpoint, monkeypatch):
    import torch

    from app_gui.main import main, parse_args

    assert parse_args([]).precision is None  # no option: the saved choice stands
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp16"])
    made: list[MainWindow] = []

    class Recorded(MainWindow):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)
            qtbot.addWidget(self)

    monkeypatch.setattr(window_mod, "MainWindow", Recorded)
    native_bf16(monkeypatch, True)
    model = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert main(["--screenshot", str(tmp_path / "shot.png"), *model, "--precision", "fp32"]) == 0
    assert made[-1].model_panel.precision() == "fp32" and made[-1].pipeline.autocast_dtype is None

    # The app itself: the event loop starts and is told to stop at once; the window and its model stay.
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main installs its own
    native_bf16(monkeypatch, False)
    QTimer.singleShot(0, qapp.quit)
    assert main([*model, "--precision", "bf16"]) == 0
    w = made[-1]
    qtbot.waitUntil(lambda: not w.loading_model, timeout=WAIT)
    assert w.model_panel.precision() == "bf16" and w.pipeline.autocast_dtype == torch.bfloat16


# --------------------------------------------------------------------------- history guidance


def record_calls(monkeypatch, pipe, name: str) -> list[dict]:
    """Wrap `pipe.<name>` so every call's keyword arguments are kept; the real method still samples."""
    calls: list[dict] = []
    real = getattr(pipe, name)

    def recorded(*args, **kwargs):
        calls.append({**kwargs, **vars(args[0])} if args and hasattr(args[0], "new_frames") else kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe, name, recorded)
    return calls


def test_history_guidance_reaches_the_pipeline(qtbot, make_window, monkeypatch, tmp_path):
    from engine.checkpoint import save_checkpoint
    from engine.models import build_models, get_preset

    w = make_window()
    spin = w.params.history_guidance
    # First run: the lowest entry, "model", which names the loaded model's own value.
    assert spin.value() == spin.minimum() and w.params.history_guidance_value() is None
    assert spin.specialValueText() == "model (1)" and spin.text() == "model (1)"
    assert "x0 = free + w (x0 − free)" in spin.toolTip() and "more network call" in spin.toolTip()
    assert spin.maximum() == 10.0 and spin.singleStep() == 0.5
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=2, steps=2, context=2)
    calls = record_calls(monkeypatch, w.pipeline, "run")
    run(qtbot, w)
    assert calls[-1]["history_guidance"] is None  # untouched: the pipeline picks the model's own
    assert "history guidance" not in w.plan_label.text()  # the model's own is 1: no extra calls

    spin.stepBy(1)  # one step up from "model" is 0 (ignore the context), not "model" again
    assert spin.value() == 0.0 and w.params.history_guidance_value() == 0.0
    run(qtbot, w)
    assert calls[-1]["history_guidance"] == 0.0
    spin.setValue(2.5)
    assert "history guidance 2.5" in w.plan_label.text()
    _, done = run(qtbot, w)
    assert calls[-1]["history_guidance"] == 2.5 and len(done.video) == 4 and w.errors == []

    w.params.mode.setCurrentIndex(1)
    run(qtbot, w)
    assert calls[-1]["history_guidance"] == 2.5 and calls[-1]["adapt_steps"] == 0

    # A checkpoint that recommends its own value: the "model" entry names it.
    cfg = get_preset("tiny")
    vae, dit = build_models(cfg)
    ckpt = save_checkpoint(tmp_path / "guided.safetensors", vae, dit, cfg,
                           meta={"sampling": {"history_guidance": 3.0}})
    w2 = make_window(ckpt)
    assert w2.pipeline.history_guidance == 3.0
    w2.params.history_guidance.setValue(w2.params.history_guidance.minimum())
    assert w2.params.history_guidance.text() == "model (3)"
    assert "history guidance 3" in w2.plan_label.text()


def test_history_guidance_the_model_refuses_is_a_one_line_error(qtbot, make_window, monkeypatch, capfd):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=2, steps=2, context=2)
    run(qtbot, w)
    result = w.result.copy()
    monkeypatch.setattr(w.pipeline.config.diffusion, "prediction", "x0-prev")  # refuses any w != 1
    w.params.history_guidance.setValue(2.0)
    capfd.readouterr()
    with qtbot.waitSignal(w.errorShown, timeout=WAIT) as blocker:
        assert w.generate()
    qtbot.waitUntil(lambda: not w.is_generating(), timeout=WAIT)
    title, message = blocker.args
    close_dialogs(w)
    assert title == "Generation failed" and message.startswith("history guidance needs a DiT")
    assert "\n" not in message and "Traceback" not in capfd.readouterr().err
    assert np.array_equal(w.result, result) and w.run_panel.generate_button.isEnabled()


def test_history_guidance_is_greyed_out_for_a_model_that_cannot_use_it(qtbot, make_window, tmp_path):
    # An x0-delta DiT cannot be history-guided (engine.sampling.supports_history_guidance): the field is greyed
    # out with the reason, runs use the model's own value (off), and the user's setting is kept for later models.
    import dataclasses

    from engine.checkpoint import save_checkpoint
    from engine.models import build_models, get_preset

    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, prediction="x0-delta"))
    vae, dit = build_models(cfg)
    w = make_window(save_checkpoint(tmp_path / "delta.safetensors", vae, dit, cfg))
    assert w.pipeline.history_guidance_supported is False
    spin = w.params.history_guidance
    assert not spin.isEnabled() and "cannot be history-guided" in spin.toolTip()
    spin.setValue(2.5)  # a value from earlier settings
    assert w.params.history_guidance_value() is None
    w.params.store(st := Settings())
    assert st.history_guidance == 2.5


def test_history_guidance_settings_round_trip_and_fallback(qtbot, make_window):
    from app_gui.settings import MODEL_HISTORY_GUIDANCE

    w = make_window()
    w.params.history_guidance.setValue(2.5)
    w.close()
    assert Settings.load().history_guidance == 2.5
    w2 = make_window(checkpoint=None)
    assert w2.params.history_guidance_value() == 2.5
    w2.params.history_guidance.setValue(w2.params.history_guidance.minimum())  # back to "model"
    w2.close()
    data = json.loads(config_path().read_text())
    assert data["history_guidance"] == MODEL_HISTORY_GUIDANCE
    assert Settings.load().history_guidance == MODEL_HISTORY_GUIDANCE
    w3 = make_window(checkpoint=None)
    assert w3.params.history_guidance_value() is None and w3.params.history_guidance.text() == "model (1)"

    for stored, expected in ((0, 0.0), (3, 3.0), (1.5, 1.5), (-2.0, MODEL_HISTORY_GUIDANCE)):
        data["history_guidance"] = stored
        config_path().write_text(json.dumps(data))
        assert Settings.load().history_guidance == expected, stored
    for bad in ("2", None, True, [2.0], float("nan"), float("inf")):
        data["history_guidance"] = bad
        config_path().write_text(json.dumps(data))  # NaN and Infinity: Python's JSON writes and reads them
        assert Settings.load().history_guidance == MODEL_HISTORY_GUIDANCE, bad
    data["history_guidance"] = "strong"
    config_path().write_text(json.dumps(data))
    w4 = make_window(checkpoint=None)
    assert w4.params.history_guidance_value() is None


def test_window_title_names_ardiff_once(qtbot, make_window):
    """Qt adds the application display name to every title itself: the window sets only what comes before it
    (the title once read "ardiff — continue a video — ardiff")."""
    w = make_window()
    assert "ardiff" not in w.windowTitle() and w.windowTitle() == "continue a video"
    open_clip(qtbot, w, DEMO)
    assert w.windowTitle() == DEMO.name


def test_heat_map_of_a_long_plan_draws_a_sample_in_bounded_memory(qtbot):
    """A 100,000-frame plan (engine LevelMatrix) is drawn from sampled rows and frames, never the full matrix
    (which would be about 400 GB)."""
    import tracemalloc

    from app_gui.heatmap import MAX_DRAWN, ScheduleHeatmap
    from engine.run import RunRequest, plan_rows

    levels, _ = plan_rows(RunRequest(new_frames=100_000, s=5, steps=50, context=8), 16, 8)
    heat = ScheduleHeatmap()
    qtbot.addWidget(heat)
    tracemalloc.start()
    heat.set_schedule(levels, 50, 8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert heat._done_img.width() == MAX_DRAWN and heat._done_img.height() == MAX_DRAWN
    assert peak < 200 * 2**20  # the drawn sample's images and one row at a time, far below the full matrix
    heat.set_row(len(levels) - 1)
    assert np.array_equal(heat.current_levels, np.zeros(100_008, np.int64))  # the last row: every frame clean
