"""The desktop app keeps every run as a take: list, switch, compare, delete and save any; a new clip never
shows (or saves) another clip's result under its name; quitting, opening and deleting ask before unsaved
takes are lost (Save / Discard / Cancel). Offscreen, with the tiny random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

try:
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtWidgets import QApplication, QDialog, QMessageBox
except ImportError:  # the gui extra is not installed
    pytest.skip("PySide6 is not installed (pip install 'ardiff[gui]')", allow_module_level=True)

from app_gui.save_dialog import SaveDialog
from app_gui.settings import Settings, config_path
from engine.save_options import SaveOptions
from engine.video_io import list_frame_files, read_video, write_video
from tests import test_gui
from tests.test_gui import DEMO, WAIT, open_clip, run, set_params, show_active

# the desktop tests' fixtures: a private config, garbage collected on the GUI thread, a window on the tiny model
_gc_on_gui_thread, _private_config, make_window = (test_gui._gc_on_gui_thread, test_gui._private_config,
                                                   test_gui.make_window)

Button = QMessageBox.StandardButton


def answer_next_box(button: Button, seen: list) -> None:
    """When the next modal message box opens, keep its text and buttons and press `button`."""
    def press():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, press)
            return
        seen.append((box.text(), box.standardButtons()))
        box.button(button).click()
    QTimer.singleShot(0, press)


def auto_save_dialog(monkeypatch, folder: Path, part: str | None = None, size: str | None = None) -> list:
    """Replace the save dialog's exec: it accepts with `folder`/take<N>.mp4 (and `part`/`size` if given) and
    records (take number, the suggested path, the offered parts and sizes)."""
    shown: list = []

    def exec_(dialog: SaveDialog) -> int:
        shown.append((dialog.take.number, dialog.path.text(),
                      [dialog.part.itemData(i) for i in range(dialog.part.count())],
                      [dialog.size.itemData(i) for i in range(dialog.size.count())],
                      (dialog.part.currentData(), dialog.size.currentData())))
        dialog.path.setText(str(folder / f"take{dialog.take.number}.mp4"))
        if part is not None:
            dialog.part.setCurrentIndex(dialog.part.findData(part))
        if size is not None:
            dialog.size.setCurrentIndex(dialog.size.findData(size))
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(SaveDialog, "exec", exec_)
    return shown


def other_clip(tmp_path) -> Path:
    """A second clip, 12 frames of the demo backwards, in another folder."""
    folder = tmp_path / "other"
    folder.mkdir()
    return write_video(folder / "city.mp4", read_video(DEMO)[::-1][:12].copy(), fps=8)


def two_takes(qtbot, w):
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=3, steps=3, context=2)
    run(qtbot, w)
    w.params.seed.setValue(7)
    run(qtbot, w)


# --------------------------------------------------------------------------- takes


def test_every_run_is_a_take_listed_switched_compared(qtbot, make_window):
    w = make_window()
    two_takes(qtbot, w)
    first, second = w.takes.get(1), w.takes.get(2)
    assert len(w.takes) == 2 and w.takes.current is second  # Generate again destroyed nothing
    assert not np.array_equal(first.video, second.video)  # another seed, another result
    assert w.takes_panel.labels() == [first.label, second.label]
    assert "Take 1 · demo.mp4 · 3 new" in first.label and "seed 7" in second.label and "unsaved" in second.label

    # Continue further: a third take whose parent is the second; the second is untouched.
    w.params.new_frames.setValue(2)
    run(qtbot, w, w.continue_further)
    third = w.takes.current
    assert third.number == 3 and third.parent == 2 and "from take 2" in w.takes_panel.labels()[2]
    assert np.array_equal(third.video[: len(second.video)], second.video) and len(third.video) == 7

    # A click in the list shows that take: the Result tab, the filmstrip and what Ctrl+S saves.
    item = w.takes_panel.list.item(0)
    rect = w.takes_panel.list.visualItemRect(item)
    qtbot.mouseClick(w.takes_panel.list.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert w.takes.current is first and np.array_equal(w.result, first.video)
    assert len(w.result_player.frames) == len(first.video) == w.filmstrip.count()
    assert w.tabs.currentWidget() is w.result_player

    # Compare takes 1 and 3: side by side, stepping and playing together, the longer one driving.
    w.takes_panel.select(1, 3)
    assert w.takes_panel.compare_button.isEnabled() and not w.takes_panel.save_button.isEnabled()
    qtbot.mouseClick(w.takes_panel.compare_button, Qt.MouseButton.LeftButton)
    view = w.compare_view
    assert w.tabs.currentIndex() == 2 and view.isVisibleTo(w) and view.takes == (first, third)
    assert view.caption_a.text() == first.label and view.caption_b.text() == third.label
    show_active(qtbot, w)
    qtbot.keyClick(w, Qt.Key.Key_Right)
    qtbot.keyClick(w, Qt.Key.Key_Right)
    assert view.a.index == view.b.index == 2
    qtbot.keyClick(w, Qt.Key.Key_End)  # take 3 has 7 frames, take 1 has 5: A stays on its last
    assert view.b.index == 6 and view.a.index == 4
    qtbot.keyClick(w, Qt.Key.Key_Home)
    qtbot.keyClick(w, Qt.Key.Key_Space)
    qtbot.waitUntil(lambda: view.b.index >= 3, timeout=WAIT)
    assert view.driver.playing and view.a.index == min(view.b.index, 4)
    qtbot.keyClick(w, Qt.Key.Key_Space)
    assert not view.a.playing and not view.b.playing


def test_delete_asks_for_unsaved_takes_and_save_any_take(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    two_takes(qtbot, w)
    w.ask_unsaved = True
    shown = auto_save_dialog(monkeypatch, tmp_path)
    seen: list = []

    # Del on an unsaved take asks; Cancel keeps it.
    w.takes_panel.select(1)
    w.takes_panel.list.setFocus()
    show_active(qtbot, w)
    w.takes_panel.list.setFocus()
    answer_next_box(Button.Cancel, seen)
    qtbot.keyClick(w.takes_panel.list, Qt.Key.Key_Delete)
    assert len(w.takes) == 2 and seen[-1][1] == Button.Save | Button.Discard | Button.Cancel
    assert "not saved" in seen[-1][0]

    # Save any take: the list's Save… saves the selected one (not the one on screen) and marks it saved.
    w.takes_panel.select(1)
    qtbot.mouseClick(w.takes_panel.save_button, Qt.MouseButton.LeftButton)
    assert shown[-1][0] == 1 and shown[-1][1] == str(DEMO.parent / "demo_continued.mp4")
    assert shown[-1][2] == ["all", "new"] and shown[-1][3] == ["model", "input"]
    assert w.takes.get(1).saved_to == tmp_path / "take1.mp4" and len(read_video(tmp_path / "take1.mp4")) == 5
    assert "unsaved" not in w.takes_panel.labels()[0] and "unsaved" in w.takes_panel.labels()[1]
    assert w.takes.current.number == 2  # saving take 1 left take 2 on screen

    # A saved take is deleted without a question; an unsaved one after Discard.
    count = len(seen)
    assert w.delete_take(1) and len(seen) == count and [t.number for t in w.takes] == [2]
    answer_next_box(Button.Discard, seen)
    assert w.delete_take(2) and len(w.takes) == 0 and w.result is None
    assert not w.act_save.isEnabled() and not w.run_panel.further_button.isEnabled()
    assert w.result_player.frames == [] and w.takes_panel.labels() == []


def test_save_dialog_parts_and_sizes_are_remembered(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    open_clip(qtbot, w, DEMO)  # 176x144: the model saw its centred 144x144 square
    set_params(w, s=1, new=3, steps=3, context=2)
    run(qtbot, w)
    shown = auto_save_dialog(monkeypatch, tmp_path, part="new", size="input")
    out = w.choose_save_path()
    assert shown[-1][4] == ("all", "model")  # first time: the engine's defaults
    frames = read_video(out)
    assert frames.shape == (3, 144, 144, 3)  # the new frames only, at the input clip's size
    assert (w.settings.save_part, w.settings.save_size) == ("new", "input")
    w.close()
    assert (Settings.load().save_part, Settings.load().save_size) == ("new", "input")
    data = json.loads(config_path().read_text())
    config_path().write_text(json.dumps({**data, "save_part": "most", "save_size": 3, "adapt": 1}))
    damaged = Settings.load()  # unknown choices fall back to the defaults, never to a crash
    assert (damaged.save_part, damaged.save_size, damaged.adapt) == ("all", "model", False)
    config_path().write_text(json.dumps(data))

    w2 = make_window(checkpoint=None)
    w2.params.mode.setCurrentIndex(1)  # from nothing: no input size to save at
    set_params(w2, s=1, new=2, steps=2, context=2)
    run(qtbot, w2)
    dialog = SaveDialog(w2, w2.takes.current, Path(w2.default_save_name()), w2.save_options())
    assert dialog.part.currentData() == "new"  # remembered
    assert dialog.size.currentData() == "model" and not dialog.size.model().item(1).isEnabled()
    assert Path(w2.default_save_name()).name == "ardiff_continued.mp4"
    _, options = dialog.choice()
    assert options == SaveOptions("new", "model")
    assert len(list_frame_files(w2.save_take(w2.takes.current, tmp_path / "frames", options))) == 2


# --------------------------------------------------------------------------- a new clip after a result


def test_new_clip_clears_the_result_and_keeps_takes_named_by_their_clip(qtbot, make_window, monkeypatch,
                                                                         tmp_path):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=3, steps=3, context=2)
    run(qtbot, w)
    tree_take = w.takes.current
    city = other_clip(tmp_path)
    open_clip(qtbot, w, city)
    # The result view no longer shows the old clip's result, and Ctrl+S has nothing of the new clip to save.
    assert w.result is None and w.result_player.frames == [] and w.filmstrip.count() == 0
    assert not w.act_save.isEnabled() and not w.run_panel.save_button.isEnabled()
    assert w.takes_panel.labels() == [tree_take.label] and "demo.mp4" in tree_take.label

    # The old take, picked again, is saved under its own clip's name, never the new clip's.
    w.select_take(tree_take.number)
    assert w.default_save_name() == str(DEMO.parent / "demo_continued.mp4")
    run(qtbot, w)
    city_take = w.takes.current
    assert city_take.clip == city and "city.mp4" in city_take.label
    assert w.default_save_name() == str(city.parent / "city_continued.mp4")
    (city.parent / "city_continued.mp4").write_bytes(b"someone's file")
    assert w.default_save_name() == str(city.parent / "city_continued-2.mp4")  # never over a file
    shown = auto_save_dialog(monkeypatch, tmp_path)
    w.takes_panel.select(tree_take.number)
    qtbot.mouseClick(w.takes_panel.save_button, Qt.MouseButton.LeftButton)
    assert shown[-1][1] == str(DEMO.parent / "demo_continued.mp4")
    assert np.array_equal(read_video(tmp_path / "take1.mp4")[0], read_video(w.takes.get(1).saved_to)[0])


# --------------------------------------------------------------------------- the three prompts


def test_open_with_unsaved_takes_asks(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    two_takes(qtbot, w)
    w.ask_unsaved = True
    city = other_clip(tmp_path)
    seen: list = []
    dialogs: list = []
    monkeypatch.setattr("app_gui.clip_control.QFileDialog.getOpenFileName",
                        lambda *a, **k: (dialogs.append(a), (str(city), ""))[1])

    answer_next_box(Button.Cancel, seen)  # Cancel: no file dialog, the clip and takes stay
    w.choose_clip()
    assert seen[-1][1] == Button.Save | Button.Discard | Button.Cancel and "2 takes" in seen[-1][0]
    assert dialogs == [] and len(w.clip) == 32 and len(w.takes) == 2

    answer_next_box(Button.Cancel, seen)  # a drop or a recent file asks too
    assert not w.open_clip(city) and len(w.clip) == 32

    shown = auto_save_dialog(monkeypatch, tmp_path)
    answer_next_box(Button.Save, seen)  # Save: one dialog per take, then the clip opens
    with qtbot.waitSignal(w.clipLoaded, timeout=WAIT):
        w.choose_clip()
    assert [s[0] for s in shown] == [1, 2] and len(dialogs) == 1 and len(w.clip) == 12
    assert all(not t.unsaved for t in w.takes) and len(w.takes) == 2

    set_params(w, s=1, new=2, steps=2, context=2)
    run(qtbot, w)
    answer_next_box(Button.Discard, seen)  # Discard: the unsaved take goes, the saved ones stay
    with qtbot.waitSignal(w.clipLoaded, timeout=WAIT):
        assert w.open_clip(DEMO)
    assert [t.number for t in w.takes] == [1, 2]


def test_quit_asks_save_discard_cancel(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    two_takes(qtbot, w)
    w.ask_unsaved = True
    show_active(qtbot, w)
    seen: list = []

    answer_next_box(Button.Cancel, seen)
    qtbot.keyClick(w, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Q
    assert seen[-1][1] == Button.Save | Button.Discard | Button.Cancel and "quitting" in seen[-1][0]
    assert w.isVisible() and len(w.takes) == 2  # Cancel: nothing happens

    shown = auto_save_dialog(monkeypatch, tmp_path)
    answer_next_box(Button.Save, seen)
    assert w.close()  # the window's close box goes the same way
    assert [s[0] for s in shown] == [1, 2] and (tmp_path / "take1.mp4").exists() and (tmp_path / "take2.mp4").exists()
    assert not w.isVisible()

    w2 = make_window()
    two_takes(qtbot, w2)
    w2.ask_unsaved = True
    monkeypatch.setattr(SaveDialog, "exec", lambda self: QDialog.DialogCode.Rejected)
    answer_next_box(Button.Save, seen)
    assert not w2.close()  # a save dialog cancelled cancels the quit
    answer_next_box(Button.Discard, seen)
    assert w2.close()


def test_deleting_a_take_during_a_run_leaves_the_run_on_screen(qtbot, make_window):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=1, new=2, steps=2, context=2)
    run(qtbot, w)
    set_params(w, s=40, new=16, steps=40, context=3)
    with qtbot.waitSignal(w.generationFinished, timeout=WAIT):
        assert w.generate()
        qtbot.waitUntil(lambda: w.filmstrip.num_new >= 1, timeout=WAIT)
        assert w.delete_take(1) and len(w.takes) == 0
        assert len(w.result_player.frames) == 3 + 16 and w.filmstrip.count() == 3 + 16  # still the run's
        w.cancel()
    assert len(w.takes) == 1 and w.result is w.takes.current.video


def test_quit_mid_run_cancels_it_and_keeps_its_frames_as_a_take(qtbot, make_window, monkeypatch, tmp_path):
    w = make_window()
    open_clip(qtbot, w, DEMO)
    set_params(w, s=40, new=16, steps=40, context=3)  # frame by frame: seconds of work
    w.ask_unsaved = True
    assert w.generate()
    qtbot.waitUntil(lambda: w.filmstrip.num_new >= 2, timeout=WAIT)
    seen: list = []
    answer_next_box(Button.Cancel, seen)
    assert not w.close()
    assert not w.is_generating() and len(w.takes) == 1  # cancelled cleanly; the frames made are a take
    take = w.takes.current
    assert take.cancelled and 2 <= take.num_new < 16 and "(stopped)" in take.label
    assert "1 take is not saved" in seen[-1][0]
    answer_next_box(Button.Discard, seen)
    assert w.close()


def test_screenshot_mid_generation_with_earlier_takes(qapp, tmp_path, tiny_checkpoint, monkeypatch):
    """`--takes N` makes N whole takes before the picture, so the README's screenshot shows the takes list."""
    import app_gui.window as window_mod
    from app_gui.main import main

    made: list = []
    real_init = window_mod.MainWindow.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(window_mod.MainWindow, "__init__", init)
    out = tmp_path / "mid.png"
    assert main(["--screenshot", str(out), "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                 "--mid-generation", "--frames", "4", "--takes", "2", str(DEMO)]) == 0
    takes = list(made[-1].takes)
    assert [t.request.seed for t in takes[:2]] == [1, 2] and all(t.num_new == 4 for t in takes[:2])
    assert len(takes) in (2, 3)  # the run in the picture, cancelled after it, is a take if it made a frame
