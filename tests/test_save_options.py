"""engine.save_options: what a save holds (clip + continuation or new frames only, at the model's size or the
input clip's) and the name every surface suggests, which never names a file that exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.errors import RunError
from engine.save_options import (
    PART_LABELS,
    SIZE_LABELS,
    SaveOptions,
    frames_to_save,
    save_side,
    suggested_output,
)


def _video(context: int = 4, new: int = 3, side: int = 16) -> np.ndarray:
    """Frame i is textured and differs from every other frame, so a wrong cut or order shows."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (context + new, side, side, 3), dtype=np.uint8)


def test_part_new_drops_exactly_the_context_frames():
    video = _video(4, 3)
    assert np.array_equal(frames_to_save(video, 4, SaveOptions(part="new")), video[4:])
    assert np.array_equal(frames_to_save(video, 4, SaveOptions(part="all")), video)
    assert np.array_equal(frames_to_save(video, 0, SaveOptions(part="new")), video)  # from nothing: all is new
    assert SaveOptions() == SaveOptions(part="all", size="model")  # the default saves what was made, as made


def test_size_input_is_the_side_of_the_inputs_centred_square_with_lanczos():
    video = _video(2, 2)
    saved = frames_to_save(video, 2, SaveOptions(part="new", size="input"), input_hw=(240, 320))  # 320x240 clip
    assert saved.shape == (2, 240, 240, 3) and saved.dtype == np.uint8
    expected = [np.asarray(Image.fromarray(f).resize((240, 240), Image.Resampling.LANCZOS)) for f in video[2:]]
    assert np.array_equal(saved, np.stack(expected))  # the same library call: exact
    tall = frames_to_save(video, 2, SaveOptions(size="input"), input_hw=(90, 40))  # a portrait clip: 40
    assert tall.shape == (4, 40, 40, 3)
    assert save_side(SaveOptions(size="input"), (240, 320)) == 240 and save_side(SaveOptions(), (240, 320)) is None
    same = frames_to_save(video, 2, SaveOptions(size="input"), input_hw=(16, 30))  # already the model's side
    assert np.array_equal(same, video)


def test_a_result_from_nothing_stays_at_the_model_size():
    video = _video(0, 3)
    assert np.array_equal(frames_to_save(video, 0, SaveOptions(size="input"), input_hw=None), video)
    assert save_side(SaveOptions(size="input"), None) is None


@pytest.mark.parametrize("make, field", [
    (lambda: SaveOptions(part="middle"), "part"),
    (lambda: SaveOptions(size="4k"), "size"),
    (lambda: SaveOptions(part="New"), "part"),  # the names are exact: the CLI's flags and the apps' lists
    (lambda: frames_to_save(_video(), 4, SaveOptions(size="input"), input_hw=(4800, 6400)), "size"),
    (lambda: frames_to_save(_video(), 4, SaveOptions(size="input"), input_hw=(0, 320)), "size"),
])
def test_bad_options_raise_a_run_error_naming_the_field(make, field):
    with pytest.raises(RunError) as err:
        make()
    assert err.value.field == field and "\n" not in str(err.value)


def test_the_labels_name_every_choice():
    assert PART_LABELS == {"all": "clip + continuation", "new": "new frames only"}
    assert SIZE_LABELS == {"model": "the model's size", "input": "the input clip's size"}


def test_suggested_output_beside_the_clip_in_a_folder_and_from_nothing(tmp_path):
    clip = tmp_path / "clips" / "tree.avi"
    assert suggested_output(clip) == tmp_path / "clips" / "tree_continued.mp4"
    assert suggested_output(str(clip), folder=tmp_path / "out") == tmp_path / "out" / "tree_continued.mp4"
    assert suggested_output(clip, suffix=".gif") == tmp_path / "clips" / "tree_continued.gif"
    assert suggested_output(None) == Path("ardiff_continued.mp4")  # the working folder
    assert suggested_output(None, folder=tmp_path) == tmp_path / "ardiff_continued.mp4"


def test_suggested_output_is_numbered_past_anything_that_exists(tmp_path):
    (tmp_path / "tree_continued.mp4").write_bytes(b"a result")
    (tmp_path / "tree_continued-2.mp4").symlink_to(tmp_path / "deleted.mp4")  # dangling: a name still taken
    (tmp_path / "tree_continued-3.mp4").mkdir()
    assert suggested_output(tmp_path / "tree.avi") == tmp_path / "tree_continued-4.mp4"
    # a save that writes a companion file: the name is free only when that is free too
    (tmp_path / "tree_continued-4_sheet.png").write_bytes(b"a sheet")
    def sheet(path: Path) -> list[Path]:
        return [path.with_name(path.stem + "_sheet.png")]

    assert suggested_output(tmp_path / "tree.avi", companions=sheet) == tmp_path / "tree_continued-5.mp4"
    # from nothing, in a folder that holds earlier ones
    (tmp_path / "ardiff_continued.mp4").write_bytes(b"x")
    assert suggested_output(None, folder=tmp_path) == tmp_path / "ardiff_continued-2.mp4"
    for name in ("tree_continued.mp4", "ardiff_continued.mp4"):
        assert (tmp_path / name).read_bytes() in (b"a result", b"x")  # looking never touches a file
