import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.video_io import probe_video, read_video

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_continue_end_to_end_on_demo_clip(tmp_path, capsys, tiny_checkpoint):
    out = tmp_path / "result.mp4"
    code, _, err = run_cli(capsys, "continue", DEMO, "-o", out, "--frames", 6, "--s", 2, "--steps", 4,
                           "--context", 4, "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert code == 0, err
    video = read_video(out)
    assert video.shape == (10, 16, 16, 3)  # 4 context + 6 new at the model's resolution
    assert probe_video(out).fps == pytest.approx(probe_video(DEMO).fps, rel=1e-3)  # container time bases, not CPU
    sheet = tmp_path / "result_sheet.png"
    assert sheet.is_file()
    assert "centre-cropped 176x144" in err and "4 context + 6 new" in err and "frames/s" in err
    # the threads the policy chose share the line that names the device and precision (ARDIFF_THREADS=1 here)
    line = next(line for line in err.splitlines() if " on cpu, " in line)
    assert line.endswith(", 1 thread (ARDIFF_THREADS)"), line


def test_continue_keeps_the_clips_last_frames_as_context(tmp_path, capsys, tiny_checkpoint):
    """Written losslessly (a PNG folder), the context is exactly the clip's last frames, fitted to the model.

    Through H.264 the check could not tell them apart: at 16x16 the codec's error (about 5 levels) is larger than
    the difference between neighbouring frames of the demo clip (about 2.5), and it moves with the sampled frames
    the encoder sees, which differ in their last bits between CPUs.
    """
    from engine.video_io import fit_frames

    out = tmp_path / "frames"
    code, _, err = run_cli(capsys, "continue", DEMO, "-o", out, "--frames", 2, "--s", 1, "--steps", 2,
                           "--context", 4, "--checkpoint", tiny_checkpoint, "--device", "cpu", "--quiet")
    assert code == 0, err
    video = read_video(out)
    assert video.shape == (6, 16, 16, 3)
    fitted = fit_frames(read_video(DEMO), 16).astype(int)
    assert np.array_equal(video[:4].astype(int), fitted[-4:])
    assert not np.array_equal(video[:4].astype(int), fitted[-5:-1])  # the check can tell an off-by-one frame


def test_generate_to_png_folder_and_gif(tmp_path, capsys, tiny_checkpoint):
    code, _, err = run_cli(capsys, "generate", "-o", tmp_path / "frames", "--frames", 3, "--steps", 2,
                           "--checkpoint", tiny_checkpoint, "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:06d}.png" for i in range(3)]
    code, _, _ = run_cli(capsys, "generate", "-o", tmp_path / "g.gif", "--frames", 2, "--steps", 2,
                         "--checkpoint", tiny_checkpoint, "--quiet")
    assert code == 0 and read_video(tmp_path / "g.gif").shape[0] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["continue", "{missing}", "-o", "{out}"], "no such file"),
        (["continue", "{text}", "-o", "{out}"], "notes.txt"),
        (["continue", "{demo}", "-o", "{out}", "--frames", "0"], "--frames: new frames must be at least 1"),
        (["continue", "{demo}", "-o", "{out}", "--s", "-1"], "--s: s must be at least 0"),
        (["continue", "{demo}", "-o", "{out}", "--history-guidance", "-1"], "history guidance must be a number >= 0"),
        (["continue", "{demo}", "-o", "{out}", "--context", "20"], "--context: context must be 1..15 frames"),
        (["continue", "{demo}", "-o", "{out}", "--checkpoint", "{pickle}"], "never unpickles"),
        (["continue", "{demo}", "-o", "{out}", "--checkpoint", "{text}"], "not a safetensors"),
        (["continue", "{empty_dir}", "-o", "{out}"], "folder has no image frames"),
        (["continue", "{demo}", "-o", "{out}", "--device", "tpu"], "device must be"),
        (["continue", "{demo}", "-o", "{out}", "--precision", "fp16"], "precision must be one of"),
        (["continue", "{demo}", "-o", "{out}", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["generate", "-o", "{out}", "--threads", "-2"], "--threads must be at least 1, got -2"),
        (["continue", "{demo}", "-o", "{out}", "--part", "middle"],
         "--part: save part must be one of all, new, got 'middle'"),
        (["continue", "{demo}", "-o", "{out}", "--size", "4k"], "--size: save size must be one of model, input, got '4k'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny_checkpoint, argv, message):
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "nope.mp4", "text": tmp_path / "notes.txt", "out": tmp_path / "out.mp4",
             "demo": DEMO, "pickle": tmp_path / "model.pt", "empty_dir": tmp_path / "empty"}
    argv = [a.format(**names) for a in argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(tiny_checkpoint)]
    code, out, err = run_cli(capsys, *argv, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ardiff: error:") and message in lines[0], err
    assert not (tmp_path / "out.mp4").exists() and not (tmp_path / "out_sheet.png").exists()


def test_threads_flag_is_applied_and_shown(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    import torch

    import engine.threads

    monkeypatch.setattr(engine.threads, "_applied", engine.threads._applied)  # this process's choice, restored
    before = torch.get_num_threads()
    try:
        code, _, err = run_cli(capsys, "generate", "-o", tmp_path / "g.gif", "--frames", 1, "--steps", 1,
                               "--checkpoint", tiny_checkpoint, "--device", "cpu", "--threads", 2)
        assert code == 0, err
        assert torch.get_num_threads() == 2
        line = next(line for line in err.splitlines() if " on cpu, " in line)
        assert line.endswith(", 2 threads (--threads)"), line
    finally:
        torch.set_num_threads(before)


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["continue"])
    assert exc.value.code == 2


def test_info_preset_paper_counts(capsys):
    code, out, _ = run_cli(capsys, "info", "--preset", "paper", "--json")
    assert code == 0
    info = json.loads(out)
    assert 640e6 < info["parameters"]["dit"] < 700e6
    assert info["config"]["dit"]["hidden"] == 1152 and info["config"]["vae"]["width"] == 1024
    code, out, _ = run_cli(capsys, "info", "--preset", "paper")
    assert "DiT           673.67M" in out


def test_info_checkpoint(capsys, tiny_checkpoint):
    code, out, _ = run_cli(capsys, "info", tiny_checkpoint)
    assert code == 0 and "random weights for tests" in out and "16x16" in out


def test_schedule_text_and_png(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "schedule", "--frames", 3, "--steps", 4, "--s", 1, "--text", "-o",
                           tmp_path / "s.png")
    assert code == 0
    assert "6 rows = 6 network calls" in out
    lines = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert lines[0][1:] == ["4", "4", "4"] and lines[1][1:] == ["3", "4", "4"] and lines[-1][1:] == ["0", "0", "0"]
    from PIL import Image
    image = Image.open(tmp_path / "s.png")
    assert image.width > 3 and image.height > 7
    code, _, err = run_cli(capsys, "schedule", "--window", 1)
    assert code == 2 and "window must be" in err


def test_console_script_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.cli", "schedule", "--frames", "2", "--steps", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "rows" in result.stdout


def test_default_context_shrinks_to_a_short_clip_and_says_so(tmp_path, capsys, tiny_checkpoint):
    """A 3-frame clip with the default context (8) continues from its 3 frames and the CLI says so; an explicit
    --context longer than the clip is refused (issue: the CLI used a short clip silently)."""
    from engine.video_io import write_video

    rng = np.random.default_rng(0)
    clip = write_video(tmp_path / "short", rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8), fps=8.0)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "continue", clip, "-o", out, "--frames", 2, "--steps", 2,
                           "--checkpoint", tiny_checkpoint, "--device", "cpu")
    assert code == 0, err
    assert "context: the clip's 3 frames" in err
    assert read_video(out).shape[0] == 5  # 3 context + 2 new
    code, _, err = run_cli(capsys, "continue", clip, "-o", tmp_path / "o2.mp4", "--context", 8, "--frames", 2,
                           "--checkpoint", tiny_checkpoint, "--device", "cpu", "--quiet")
    assert code == 2 and "only 3 frame(s), fewer than context 8" in err and not (tmp_path / "o2.mp4").exists()


def test_demo_continues_the_demo_clip_with_the_default_model(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """`make demo`'s command end to end (the default model stood in for by the tiny one through
    ARDIFF_CHECKPOINT): the video and its sheet, 8 context + 24 new frames."""
    monkeypatch.setenv("ARDIFF_CHECKPOINT", str(tiny_checkpoint))
    out = tmp_path / "demo.mp4"
    code, _, err = run_cli(capsys, "demo", "-o", out, "--device", "cpu")
    assert code == 0, err
    assert read_video(out).shape[0] == 32 and (tmp_path / "demo_sheet.png").is_file()


def test_info_summarises_the_provenance_for_people_and_keeps_json_whole(capsys):
    """`ardiff info` on the embedded model: its stages with their steps, data and weights in words; no raw JSON
    and none of the build machine's paths (those are for --json, which keeps the whole record)."""
    code, out, _ = run_cli(capsys, "info")
    assert code == 0
    assert ("training      vae-image 1,200 steps, diffusion 7,000 steps, vae-temporal (decoder only) 400 steps, "
            "vae-temporal (decoder only) #2 1,500 steps") in out
    assert "border mixer 32 channels" in out  # the decoder's mixer, from the packaged config
    assert "trained with  fopp compositions, clean prefix 0.95, predicts x0-delta\n" in out
    assert "{" not in out and "/runs/" not in out and "--json" in out
    code, out, _ = run_cli(capsys, "info", "--json")
    meta = json.loads(out)["meta"]
    assert meta["steps"]["diffusion"] == 7000 and "sources" in meta and meta["recipe"][0]["stage"] == "vae-image"


def _clip(tmp_path: Path, height: int = 24, width: int = 32, count: int = 6) -> Path:
    """A lossless clip (a folder of PNGs) wider than tall: the model sees its centred height x height square."""
    from engine.video_io import write_video

    rng = np.random.default_rng(5)
    return write_video(tmp_path / "clip", rng.integers(0, 255, (count, height, width, 3), dtype=np.uint8), fps=8.0)


SMALL = ["--frames", "2", "--steps", "2", "--context", "4", "--device", "cpu", "--quiet"]


def test_continue_saves_beside_the_clip_by_default_and_never_over_a_file(tmp_path, capsys, tiny_checkpoint):
    """Without -o the result is <clip>_continued.mp4 beside the clip, as the apps suggest, numbered past a
    video that exists and past a contact sheet that exists, and the wrote line names it; nothing is touched."""
    clip = _clip(tmp_path)
    (tmp_path / "clip_continued.mp4").write_bytes(b"an earlier result")
    (tmp_path / "clip_continued-2_sheet.png").write_bytes(b"someone's sheet")
    code, _, err = run_cli(capsys, "continue", clip, "--checkpoint", tiny_checkpoint, *SMALL[:-1])
    assert code == 0, err
    expected = tmp_path / "clip_continued-3.mp4"
    assert f"wrote {expected} (6 frames: 4 context + 2 new, 16x16) and {tmp_path / 'clip_continued-3_sheet.png'}" \
        in err, err
    assert read_video(expected).shape == (6, 16, 16, 3)  # defaults: clip + continuation at the model's size
    assert (tmp_path / "clip_continued.mp4").read_bytes() == b"an earlier result"
    assert (tmp_path / "clip_continued-2_sheet.png").read_bytes() == b"someone's sheet"
    assert not (tmp_path / "clip_continued-2.mp4").exists()


def test_part_new_and_size_input_save_what_they_say(tmp_path, capsys, tiny_checkpoint):
    """--part new drops exactly the context frames; --size input is the side of the clip's centred square
    (24 of 24x32) made from the model's frames with PIL's Lanczos; the sheet shows what the video holds."""
    from PIL import Image

    clip = _clip(tmp_path)
    args = ["continue", clip, "--checkpoint", tiny_checkpoint] + SMALL
    assert run_cli(capsys, *args, "-o", tmp_path / "whole")[0] == 0
    code, _, err = run_cli(capsys, *args[:-1], "-o", tmp_path / "new", "--part", "new", "--size", "input")
    assert code == 0 and "(2 new frames, 24x24)" in err, err
    whole, new = read_video(tmp_path / "whole"), read_video(tmp_path / "new")  # PNG folders: lossless
    assert whole.shape == (6, 16, 16, 3) and new.shape == (2, 24, 24, 3)
    lanczos = [np.asarray(Image.fromarray(f).resize((24, 24), Image.Resampling.LANCZOS)) for f in whole[4:]]
    assert np.array_equal(new, np.stack(lanczos))  # same seed, same machine: the same frames, upscaled
    for name, colour, thumbs in (("whole", (66, 133, 244), 6), ("new", (255, 152, 0), 2)):
        sheet = np.asarray(Image.open(tmp_path / f"{name}_sheet.png"))
        assert tuple(sheet[2, 2]) == colour  # the first cell's border: blue for the clip, orange for new frames
        cell = 16 if name == "whole" else 24
        assert sheet.shape[1] == thumbs * (cell + 4 + 2) + 2  # one cell (+ border and gap) per frame saved
    code, _, err = run_cli(capsys, *args, "-o", tmp_path / "model_new", "--part", "new")
    assert code == 0 and np.array_equal(read_video(tmp_path / "model_new"), whole[4:])


def test_generate_without_o_uses_the_name_the_apps_suggest(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ardiff_continued.mp4").symlink_to(tmp_path / "gone.mp4")  # dangling: still taken
    code, _, err = run_cli(capsys, "generate", "--frames", 2, "--steps", 2, "--checkpoint", tiny_checkpoint)
    assert code == 0, err
    assert "wrote ardiff_continued-2.mp4 (2 new frames, 16x16) and ardiff_continued-2_sheet.png" in err
    assert read_video(tmp_path / "ardiff_continued-2.mp4").shape == (2, 16, 16, 3)
    assert (tmp_path / "ardiff_continued.mp4").is_symlink() and not (tmp_path / "gone.mp4").exists()


def test_every_run_default_is_run_requests():
    """`ardiff continue x` and `ardiff generate` with no options ask for RunRequest() itself, field by field
    (issue 23, item 7: one set of defaults), and save what SaveOptions() saves."""
    from dataclasses import asdict

    from engine.cli import build_parser, request_for
    from engine.run import RunRequest
    from engine.save_options import SaveOptions

    parser = build_parser()
    for argv in (["continue", "x"], ["generate"]):
        args = parser.parse_args(argv)
        assert asdict(request_for(args)) == asdict(RunRequest()), argv
        assert args.output is None  # the suggested name, chosen when the command runs
    args = parser.parse_args(["continue", "x"])
    assert SaveOptions(args.part, args.size) == SaveOptions()


def test_an_input_too_large_to_save_at_is_refused_before_sampling(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """--size input past engine.save_options.MAX_SIDE is one line naming --size, before any row runs (the
    limit lowered to 20 here so a 24x32 clip is past it); nothing is written."""
    import engine.pipeline
    import engine.save_options

    monkeypatch.setattr(engine.save_options, "MAX_SIDE", 20)
    monkeypatch.setattr(engine.pipeline.Pipeline, "run", lambda *a, **k: pytest.fail("sampled before refusing"))
    code, _, err = run_cli(capsys, "continue", _clip(tmp_path), "--checkpoint", tiny_checkpoint, *SMALL,
                           "--size", "input", "-o", tmp_path / "big.mp4")
    assert code == 2 and err.strip() == "ardiff: error: --size: an input of 32x24 cannot be the save size (sides " \
                                        "1..20)", err
    assert not (tmp_path / "big.mp4").exists() and not (tmp_path / "big_sheet.png").exists()
