"""The desktop app's conventions: player keys, a small window that keeps the Run controls, the xcb check before
Qt starts, defaults from the engine, a short clip used whole, "adapt to this clip", Open during a run, CUDA
greyed out where there is none, and an ETA that holds on a run whose costs are known."""

from __future__ import annotations

import time

import pytest

try:
    from PySide6.QtCore import QPoint, QRect, Qt
    from PySide6.QtWidgets import QMessageBox
except ImportError:  # the gui extra is not installed
    pytest.skip("PySide6 is not installed (pip install 'ardiff[gui]')", allow_module_level=True)

from app_gui import xcb_check
from engine.eta import decodes_per_row
from app_gui.settings import Settings
from app_gui.window import MINIMUM_SIZE
from engine.pipeline import Adapted, Adapting, FrameReady, Progress
from engine.run import DEFAULT_ADAPT_STEPS, RunRequest
from engine.video_io import read_video, write_video
from tests import test_gui
from tests.test_gui import DEMO, WAIT, close_dialogs, open_clip, record_calls, run, set_params, show_active

# the desktop tests' fixtures: a private config, garbage collected on the GUI thread, a window on the tiny model
_gc_on_gui_thread, _private_config, make_window = (test_gui._gc_on_gui_thread, test_gui._private_config,
                                                   test_gui.make_window)

# --------------------------------------------------------------------------- keys


def test_player_keys_as_in_mpv_and_vlc(qtbot, make_window):
    w = make_window()
    w.set_clip(read_video(DEMO, max_frames=6), 8.0, "six frames")
    show_active(qtbot, w)
    p = w.input_player
    w.result_player.setFocus()
    for key, index in ((Qt.Key.Key_Right, 1), (Qt.Key.Key_Period, 2), (Qt.Key.Key_Comma, 1), (Qt.Key.Key_Left, 0),
                       (Qt.Key.Key_End, 5), (Qt.Key.Key_Home, 0)):
        qtbot.keyClick(w, key)
        assert p.index == index, key
    qtbot.keyClick(w, Qt.Key.Key_L)  # L plays forwards; again, twice as fast
    assert p.playing and p.speed == 1
    qtbot.keyClick(w, Qt.Key.Key_L)
    assert p.speed == 2
    qtbot.keyClick(w, Qt.Key.Key_K)  # K pauses
    assert not p.playing
    qtbot.keyClick(w, Qt.Key.Key_End)
    qtbot.keyClick(w, Qt.Key.Key_J)  # J plays backwards
    assert p.playing and p.speed == -1
    qtbot.waitUntil(lambda: p.index <= 3, timeout=WAIT)
    qtbot.keyClick(w, Qt.Key.Key_Space)
    assert not p.playing
    # A number typed in a settings field stays there: "." and "," are not frame steps while editing.
    w.params.seed.setFocus()
    at = p.index
    qtbot.keyClick(w.params.seed, Qt.Key.Key_Period)
    qtbot.keyClick(w.params.seed, Qt.Key.Key_Home)
    assert p.index == at

    # The step buttons read as frame steps, and every key is in a tooltip and in F1's help.
    assert p.back_button.text() == "−1 frame" and p.next_button.text() == "+1 frame"
    assert "Left" in p.back_button.toolTip() and "," in p.back_button.toolTip()
    assert "Right" in p.next_button.toolTip() and "." in p.next_button.toolTip()
    assert all(k in p.play_button.toolTip() for k in ("Space", "J", "K", "L", "Home", "End"))
    w._show_help()
    help_text = w.findChildren(QMessageBox)[-1].text()
    assert all(k in help_text for k in ("Space", "Left", "Home / End", "J —", "K —", "L —", "Takes"))


# --------------------------------------------------------------------------- a small window


def test_run_controls_stay_on_screen_at_the_minimum_size(qtbot, make_window):
    w = make_window()
    w.show()
    w.resize(200, 150)  # smaller than allowed: the window stops at its minimum
    qtbot.waitUntil(lambda: (w.width(), w.height()) == MINIMUM_SIZE, timeout=WAIT)
    assert (w.minimumWidth(), w.minimumHeight()) == MINIMUM_SIZE
    central = QRect(w.centralWidget().mapTo(w, QPoint(0, 0)), w.centralWidget().size())
    run_panel = w.run_panel
    for button in (run_panel.generate_button, run_panel.cancel_button, run_panel.save_button,
                   run_panel.further_button):
        rect = QRect(button.mapTo(w, QPoint(0, 0)), button.size())
        assert central.contains(rect), (button.text(), rect, central)
        # not hidden behind a scroll area's edge: the whole button is in view
        assert button.visibleRegion().boundingRect().size() == button.size(), button.text()
    # The settings scroll, with their scroll bar inside the window.
    qtbot.wait(50)
    bar = w.settings_scroll.verticalScrollBar()
    assert bar.isVisible() and central.contains(QRect(bar.mapTo(w, QPoint(0, 0)), bar.size()))
    # The status bar: a long model description is cut, not pushed past the window's edge.
    w.status_model.setText("Model: a-checkpoint-with-a-very-long-name.safetensors (tiny, 16px) · Device: cpu · "
                           "bfloat16 and more words than fit")
    w.statusBar().showMessage("Opened a clip with a long name: 32 frames, 176x144, 8 fps")
    qtbot.wait(50)
    label = w.status_model
    assert label.geometry().right() <= w.statusBar().width()
    assert label.shown_text().count("…") == 1 and label.toolTip() == label.text()


# --------------------------------------------------------------------------- Qt's xcb libraries


def test_missing_xcb_libraries_are_named_before_qt_starts(monkeypatch, capsys):
    from app_gui import main as main_mod

    env = {"DISPLAY": ":0"}
    assert xcb_check.uses_xcb(env, "linux") and not xcb_check.uses_xcb({**env, "XDG_SESSION_TYPE": "wayland"},
                                                                        "linux")
    assert not xcb_check.uses_xcb({**env, "QT_QPA_PLATFORM": "offscreen"}, "linux")
    assert xcb_check.uses_xcb({"QT_QPA_PLATFORM": "xcb"}, "linux") and not xcb_check.uses_xcb(env, "darwin")
    absent = {"libxcb-icccm.so.4", "libxcb-keysyms.so.1"}  # what the desktop lacked
    monkeypatch.setattr(xcb_check, "loadable", lambda soname: soname not in absent)
    monkeypatch.setattr(xcb_check, "uses_xcb", lambda: True)
    made: list = []
    monkeypatch.setattr("PySide6.QtWidgets.QApplication.__init__", lambda *a: made.append(a))
    assert main_mod.main([]) == 2
    err = capsys.readouterr().err
    assert made == [] and err.count("\n") == 1  # one line, and Qt never started
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1" in err and "libxcb-cursor" not in err
    assert "sudo apt install libxcb-icccm4 libxcb-keysyms1" in err
    assert "sudo dnf install xcb-util-wm xcb-util-keysyms" in err
    monkeypatch.setattr(xcb_check, "loadable", lambda soname: True)
    assert xcb_check.xcb_problem() is None


# --------------------------------------------------------------------------- defaults and a short clip


def test_defaults_come_from_the_engine_and_a_short_clip_is_used_whole(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    p, r = w.params, RunRequest()
    assert (p.new_frames.value(), p.s_spin.value(), p.steps.value(), p.context.value(), p.seed.value()) == \
        (r.new_frames, r.s, r.steps, r.context, r.seed)
    assert not p.adapt.isChecked()
    short = write_video(tmp_path / "short.mp4", read_video(DEMO, max_frames=3), fps=8)
    open_clip(qtbot, w, short)
    set_params(w, s=1, new=2, steps=2, context=8)
    calls = record_calls(monkeypatch, w.pipeline, "run")
    messages: list = []
    w.statusBar().messageChanged.connect(messages.append)
    _, done = run(qtbot, w)
    assert done.num_context == 3 and calls[-1]["context"] == 3 and w.errors == []
    assert any("only 3 frames" in m and "all of them" in m for m in messages)


# --------------------------------------------------------------------------- adapt to this clip


def fake_adapting(pipe, monkeypatch, steps: int = 4, hold=None):
    """Make `pipe.run` yield what an adapting engine does first (Adapting per step, then Adapted), then the real
    stream (which, cancelled while adapting, ends at once with Done(cancelled)); `hold(step)` may block a step."""
    import dataclasses

    real = pipe.run

    def run(request, frames=None, cancel=None, adapt_clip=None):
        def stream():
            start = time.perf_counter()
            for step in range(1, steps + 1):
                if hold is not None:
                    hold(step)
                if cancel is not None and cancel.is_set():
                    yield Adapted(False, f"adapting cancelled after {step - 1} of {steps} steps", 0.3, 0.3)
                    break
                yield Adapting(step, steps, 1.0 / step, time.perf_counter() - start, 0.5 * (steps - step))
            else:
                yield Adapted(True, "Adapted: held-out loss 0.30 → 0.20, using the adapted model", 0.3, 0.2)
            yield from real(dataclasses.replace(request, adapt_steps=0), frames, cancel)
        return stream()

    monkeypatch.setattr(pipe, "run", run)


def test_adapt_to_this_clip(qtbot, make_window, monkeypatch):
    import threading

    w = make_window()
    adapt = w.params.adapt
    assert not adapt.isChecked() and "minute" in adapt.toolTip() and str(DEFAULT_ADAPT_STEPS) in adapt.toolTip()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=2, steps=2, context=2)
    adapt.setChecked(True)
    fake_adapting(w.pipeline, monkeypatch)
    calls = record_calls(monkeypatch, w.pipeline, "run")  # what the window asked of the (adapting) engine
    shown: list = []
    w.eventReceived.connect(lambda e: shown.append((type(e).__name__, w.run_panel.label.text(),
                                                    w.run_panel.progress.format(), w.run_panel.progress.value())))
    messages: list = []
    w.statusBar().messageChanged.connect(messages.append)
    _, done = run(qtbot, w)
    assert calls[-1]["adapt_steps"] == DEFAULT_ADAPT_STEPS and not done.cancelled
    adapting = [s for s in shown if s[0] == "Adapting"]
    assert [s[3] for s in adapting] == [1, 2, 3, 4] and adapting[0][2].startswith("adapting")
    assert "step 2/4" in adapting[1][1] and "ETA 1.0 s" in adapting[1][1]
    assert any("Adapted: held-out loss" in m for m in messages)
    assert len(w.takes) == 1

    # Cancel while adapting: the run stops, no error, no take, the window is ready again.
    gate = threading.Event()
    fake_adapting(w.pipeline, monkeypatch, steps=50, hold=lambda step: step > 2 and gate.wait(10))
    show_active(qtbot, w)
    assert w.generate()
    qtbot.waitUntil(lambda: "step 2/50" in w.run_panel.label.text(), timeout=WAIT)
    qtbot.keyClick(w.result_player, Qt.Key.Key_Escape)
    gate.set()
    qtbot.waitUntil(lambda: not w.is_generating(), timeout=WAIT)
    assert w.errors == [] and len(w.takes) == 1 and "Cancelled while adapting" in w.run_panel.label.text()

    # Remembered; and off for "generate from nothing", which has no clip to adapt to.
    w.params.mode.setCurrentIndex(1)
    assert not adapt.isEnabled()
    w.close()
    assert Settings.load().adapt is True
    w2 = make_window(checkpoint=None)
    assert w2.params.adapt.isChecked()


# --------------------------------------------------------------------------- Open during a run, CUDA


def test_open_during_a_run_says_why_and_cuda_is_greyed_out_without_it(qtbot, make_window, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    w = make_window()
    combo = w.model_panel.device_combo
    cuda = combo.model().item(combo.findData("cuda"))
    assert not cuda.isEnabled() and "CUDA is not available" in cuda.toolTip()
    assert combo.model().item(combo.findData("cpu")).isEnabled()

    open_clip(qtbot, w, DEMO)
    set_params(w, s=40, new=16, steps=40, context=3)
    dialogs: list = []
    monkeypatch.setattr("app_gui.clip_control.QFileDialog.getOpenFileName",
                        lambda *a, **k: (dialogs.append(a), ("", ""))[1])
    show_active(qtbot, w)
    with qtbot.waitSignal(w.generationFinished, timeout=WAIT):
        assert w.generate()
        qtbot.keyClick(w, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)  # Ctrl+O
        assert dialogs == [] and "Esc cancels the run" in w.statusBar().currentMessage()
        assert w.act_open.isEnabled() and "cannot be opened while a run" in w.act_open.toolTip()
        w.cancel()
    assert "cannot" not in w.act_open.toolTip()
    close_dialogs(w)


# --------------------------------------------------------------------------- ETA


def test_decodes_per_row_are_the_frames_each_row_finishes(qtbot, make_window):
    w = make_window()
    frames = read_video(DEMO, max_frames=5)
    for s, new, steps, context in ((0, 6, 4, 3), (2, 5, 6, 2), (6, 4, 6, 4)):
        request = RunRequest(new_frames=new, s=s, steps=steps, context=context)
        events = list(w.pipeline.run(request, frames))
        plan = events[0].plan
        counts, row_count = [], 0
        for e in events[1:]:
            if isinstance(e, FrameReady):
                row_count += 1
            elif isinstance(e, Progress):
                counts.append(row_count)
                row_count = 0
        assert list(decodes_per_row(plan.levels, plan.num_context)) == counts, (s, new, steps, context)


@pytest.mark.parametrize("per_decode", [0.025, 0.1])
def test_eta_after_a_tenth_is_within_30_percent_on_a_slowed_model(qtbot, make_window, monkeypatch, per_decode):
    """The model is slowed so the run's time is known costs: a sleep per frame the DiT pushes and one per frame
    the decoder makes (3 or 12 frame-forwards: the ETA must measure it, not assume it; the real model's is
    about 7 on CPU). The first row also decodes the context (the warm-up); frames turn clean as the run
    goes, none in the first tenth."""
    w = make_window()
    pipe = w.pipeline
    per_frame = 0.008  # seconds: far above the tiny model's own cost per call
    forward, decode = pipe.dit.forward_cached, pipe.vae.decode_next

    def slow_forward(z, *args, **kwargs):
        time.sleep(per_frame * z.shape[1])
        return forward(z, *args, **kwargs)

    def slow_decode(*args, **kwargs):
        time.sleep(per_decode)
        return decode(*args, **kwargs)

    monkeypatch.setattr(pipe.dit, "forward_cached", slow_forward)
    monkeypatch.setattr(pipe.vae, "decode_next", slow_decode)
    open_clip(qtbot, w, DEMO)
    set_params(w, s=4, new=12, steps=8, context=6)
    seen: list = []
    w.eventReceived.connect(lambda e: seen.append((e, w.run_panel.eta)) if isinstance(e, Progress) else None)
    events, done = run(qtbot, w)
    total = seen[0][0].total_rows
    at, eta = next((e, eta) for e, eta in seen if e.row >= total / 10)
    actual = done.elapsed - at.elapsed
    assert not any(isinstance(e, FrameReady) and e.index >= 6 for e in events[: events.index(at)])
    assert abs(eta - actual) <= 0.3 * actual, (at.row, total, eta, actual)
    # and near the end it does not claim nothing is left while decoding remains
    last = seen[-2]
    assert last[1] > 0.5 * (done.elapsed - last[0].elapsed)
