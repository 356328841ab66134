"""engine.takes: every run kept as a numbered take; deleting never renumbers or reuses, the current take
moves to a neighbour, and what is unsaved is what a quit must ask about."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.run import RunRequest
from engine.takes import Takes


def _video(frames: int, value: int = 0) -> np.ndarray:
    return np.full((frames, 4, 4, 3), value, np.uint8)


def _three() -> Takes:
    takes = Takes()
    takes.add(_video(10), 4, 8.0, "clips/tree.avi", RunRequest())
    takes.add(_video(6), 0, 8.0, None, RunRequest(s=0, steps=4, seed=3))
    takes.add(_video(14), 4, 14.9999, Path("clips/city.mpg"), RunRequest(new_frames=10), parent=1, cancelled=True)
    return takes


def test_numbers_are_never_reused_after_a_delete():
    takes = _three()
    takes.remove(3)
    takes.remove(2)
    assert takes.add(_video(5), 4, 8.0, None, RunRequest()).number == 4  # not 2 or 3 again
    takes.remove(1)
    takes.remove(4)
    assert len(takes) == 0 and takes.current is None
    assert takes.add(_video(5), 4, 8.0, None, RunRequest()).number == 5
    with pytest.raises(KeyError):
        takes.get(3)
    assert [t.number for t in takes] == [5]


def test_the_current_take_after_a_delete():
    takes = _three()
    assert takes.current.number == 3  # a new take is the one on screen
    assert takes.select(2).number == 2
    assert takes.remove(2).number == 3  # the current one removed: the next one
    assert takes.remove(3).number == 1  # the last one removed: the one before
    takes = _three()
    takes.select(1)
    assert takes.remove(3).number == 1  # removing another take leaves the current one
    assert takes.remove(1).number == 2 and takes.remove(2) is None and takes.current is None


def test_unsaved_and_mark_saved(tmp_path):
    takes = _three()
    assert [t.number for t in takes.unsaved()] == [1, 2, 3]
    takes.mark_saved(2, tmp_path / "two.mp4")
    assert [t.number for t in takes.unsaved()] == [1, 3]
    assert takes.get(2).saved_to == tmp_path / "two.mp4" and not takes.get(2).unsaved
    takes.mark_saved(2, str(tmp_path / "again.mp4"))  # saved twice: the last place
    assert takes.get(2).saved_to == tmp_path / "again.mp4"
    takes.remove(1)
    assert [t.number for t in takes.unsaved()] == [3]  # a deleted take is nothing to lose
    with pytest.raises(KeyError):
        takes.mark_saved(1, tmp_path / "gone.mp4")


def test_of_clip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    takes = _three()
    assert [t.number for t in takes.of_clip("clips/tree.avi")] == [1]
    assert [t.number for t in takes.of_clip(Path("clips/city.mpg"))] == [3]
    assert [t.number for t in takes.of_clip(None)] == [2]  # those made from nothing
    assert takes.of_clip("clips/other.avi") == []
    # the same file named another way (./, absolute) is the same clip
    assert [t.number for t in takes.of_clip("./clips/tree.avi")] == [1]
    assert [t.number for t in takes.of_clip(tmp_path / "clips" / "tree.avi")] == [1]


def test_label_wording():
    takes = _three()
    assert takes.get(1).label == "Take 1 · tree.avi · 6 new · s 5 · 50 steps · seed 0 · 8 fps · unsaved"
    assert takes.get(2).label == "Take 2 · from nothing · 6 new · s 0 · 4 steps · seed 3 · 8 fps · unsaved"
    assert takes.get(3).label == ("Take 3 · city.mpg · from take 1 · 10 new (stopped) · s 5 · 50 steps · seed 0 · "
                                  "15 fps · unsaved")
    takes.mark_saved(1, "out.mp4")
    assert takes.get(1).label == "Take 1 · tree.avi · 6 new · s 5 · 50 steps · seed 0 · 8 fps"
    assert takes.get(3).num_new == 10 and takes.get(3).source == "city.mpg"


def test_takes_with_equal_videos_are_still_different_takes():
    """Two runs with the same frames (same seed) are two takes: deleting one leaves the other."""
    takes = Takes()
    for _ in range(2):
        takes.add(_video(5, 7), 4, 8.0, "a.mp4", RunRequest())
    takes.select(1)
    assert takes.remove(1).number == 2 and [t.number for t in takes] == [2]
    other = Takes().add(_video(5, 7), 4, 8.0, "a.mp4", RunRequest())  # another session's take 1, same frames
    first = Takes().add(_video(5, 7), 4, 8.0, "a.mp4", RunRequest())
    assert first != other and first not in [other] and first in [first]  # identity (no array truth error)
