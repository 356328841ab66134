"""`ardiff eval` and engine.evaluation: alignment of the comparison, reports, FVD plumbing (stand-in I3D)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.cli import main
from engine.errors import ArdiffError
from engine.evaluation.clips import Clip
from engine.evaluation.continuation import (
    AUTOENCODER_NAME,
    BASELINE_NAME,
    evaluate_continuation,
    horizons_for,
    parse_s_values,
)
from engine.evaluation.fvd_runs import fvd_between_files, video_features
from engine.evaluation.reports import write_reports
from engine.video_io import fit_frames, write_video
from trainer.synthetic import bouncing_clip


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class _StubI3D(torch.nn.Module):
    """Deterministic stand-in for the Kinetics-400 I3D: 24 features from pooled pixel statistics, any T >= 9."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 2 * 2 * 2, 24, generator=g), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        assert x.ndim == 5 and x.shape[1] == 3 and x.shape[2] >= 9 and x.shape[3:] == (224, 224)
        assert x.min() >= -1 and x.max() <= 1
        self.calls += 1
        pooled = F.adaptive_avg_pool3d(x, (2, 2, 2)).flatten(1)
        return pooled @ self.proj, pooled


@pytest.fixture
def stub_i3d(monkeypatch):
    import engine.metrics

    stub = _StubI3D()
    monkeypatch.setattr(engine.metrics, "load_i3d", lambda weights=None, device="cpu", **kw: stub)
    return stub


@pytest.fixture(scope="module")
def tiny_pipe(tiny_checkpoint):
    from engine.pipeline import load_pipeline

    return load_pipeline(tiny_checkpoint, "cpu")


def _static_clip(n=12, size=16):
    rng = np.random.default_rng(3)
    return np.repeat(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8), n, axis=0)


# ------------------------------------------------------------------------------------------------
# alignment: what is compared with what
# ------------------------------------------------------------------------------------------------


def _truth_model(pipe, clips, context, shift=0):
    """Replace pipe.continue_video by a 'model' that returns the real next frames (shifted by `shift`)."""
    from engine.pipeline import Done, FrameReady, Progress
    from engine.sampling import SamplerStats

    fitted = [fit_frames(c, pipe.resolution) for c in clips]

    def continue_video(frames, num_new_frames, s, steps, seed, **kw):
        match = [f for f in fitted if np.array_equal(f[:len(frames)], frames)]
        assert match, "the context handed to the pipeline must be the clip's first frames, fitted"
        video = match[0]
        new = video[context + shift:context + shift + num_new_frames] if len(frames) == context \
            else video[len(frames):len(frames) + num_new_frames]  # the warm-up run
        for i, image in enumerate(new):
            yield FrameReady(len(frames) + i, image)
        yield Progress(1, 1, np.zeros(num_new_frames, int), len(new), 0.0)
        yield Done(np.concatenate([frames, new]), len(frames), SamplerStats(rows=1), 0.0)

    return continue_video


def test_ground_truth_model_scores_perfectly_and_shift_by_one_does_not(tiny_pipe, monkeypatch):
    clips = [bouncing_clip(seed, 15, size=32) for seed in (1, 2, 3)]  # moving shapes, fitted 32 -> 16
    monkeypatch.setattr(tiny_pipe, "continue_video", _truth_model(tiny_pipe, clips, context=4))
    result = evaluate_continuation(tiny_pipe, clips, context=4, frames=10, s_values=[0, 3], steps=2, seed=0,
                                   i3d=_StubI3D())
    for s in (0, 3):
        run = result.run(s)
        assert run.psnr.shape == run.ssim.shape == (3, 10)
        assert np.all(np.isinf(run.psnr)) and np.allclose(run.ssim, 1.0)
        # identical sets: identical features, float64 from there (~1e-12 of round-off on any CPU)
        assert set(run.fvd) == {"fvd", "kvd"} and run.fvd["fvd"] == pytest.approx(0.0, abs=1e-6)
        assert run.fvd["kvd"] <= 1e-9  # unbiased: identical sets score at most 0
    # The moving baseline is imperfect, so the comparison really looks at the right frames.
    base = result.baseline
    assert np.all(np.isfinite(base.psnr)) and base.ssim.max() < 1.0 and base.fvd["fvd"] > 1e-3
    assert base.fvd["kvd"] > result.run(0).fvd["kvd"] + 1e-6
    # A model that is one frame ahead of the truth is caught: finite PSNR at every horizon.
    monkeypatch.setattr(tiny_pipe, "continue_video", _truth_model(tiny_pipe, clips, context=4, shift=1))
    shifted = evaluate_continuation(tiny_pipe, clips, context=4, frames=10, s_values=[0], steps=2, seed=0)
    assert np.all(np.isfinite(shifted.run(0).psnr))


def test_copy_last_frame_baseline_static_vs_moving(tiny_pipe):
    static = _static_clip(12)
    moving = bouncing_clip(5, 12, size=16)
    result = evaluate_continuation(tiny_pipe, [Clip("static", static), Clip("moving", moving)], context=4,
                                   frames=6, s_values=[0], steps=1, seed=0, warmup=False)
    base = result.baseline
    assert np.all(np.isinf(base.psnr[0])) and np.allclose(base.ssim[0], 1.0)
    assert np.all(np.isfinite(base.psnr[1])) and base.psnr[1].min() > 5
    # Horizon 1 of a moving clip is the closest to its last context frame: PSNR falls with the horizon.
    assert base.psnr[1][0] > base.psnr[1][-1]
    assert result.fvd_missing and "I3D" in result.fvd_missing and result.runs[0].fvd == {}


# ------------------------------------------------------------------------------------------------
# `ardiff eval continue` end to end
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def clip_dir(tmp_path):
    folder = tmp_path / "clips"
    write_video(folder / "a.mp4", bouncing_clip(1, 14, size=32), fps=8)
    write_video(folder / "b_frames", bouncing_clip(2, 14, size=32))  # a folder of PNG frames counts too
    (folder / "notes.txt").write_text("not a video")
    return folder


def test_eval_continue_end_to_end(tmp_path, capsys, tiny_checkpoint, clip_dir, stub_i3d):
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "continue", "--checkpoint", tiny_checkpoint, "--clips", clip_dir,
                           "--context", 4, "--frames", 10, "--s", "0,2", "--steps", 3, "--device", "cpu", "-o", out)
    assert code == 0, err
    assert "wrote" in err and "s=2" in err
    md = (out / "results.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| s | FVD (new 10) | KVD (new 10) |") and "PSNR / SSIM @1" in table[0]
    assert "Inference time" in table[0]
    assert [row.split("|")[1].strip() for row in table[2:]] == ["0", "2", BASELINE_NAME, AUTOENCODER_NAME]
    assert "n/a" not in md and "all 10 new frames" in md
    data = json.loads((out / "results.json").read_text())
    assert data["setup"] == {"context": 4, "frames": 10, "steps": 3, "seed": 0, "s_values": [0, 2],
                             "clip_seed": "seed + clip index", "history_guidance": 1.0}
    assert [c["name"] for c in data["clips"]] == ["a.mp4", "b_frames"]
    assert [r["name"] for r in data["runs"]] == ["s=0", "s=2", BASELINE_NAME, AUTOENCODER_NAME]
    assert [r["kind"] for r in data["runs"]] == ["model", "model", "baseline", "autoencoder"]
    assert data["horizons"] == list(range(1, 11)) and data["fvd_missing"] is None
    for run in data["runs"]:
        assert len(run["psnr_per_horizon"]) == len(run["ssim_per_horizon"]) == 10
        assert len(run["per_clip"]) == 2 and all(len(c["psnr"]) == 10 for c in run["per_clip"])
        assert set(run["fvd"]) == {"fvd", "kvd"} and run["fvd"]["fvd"] >= 0 and math.isfinite(run["fvd"]["kvd"])
        assert math.isfinite(run["psnr_mean"]) and -1 <= run["ssim_mean"] <= 1
    assert data["runs"][0]["frames_per_second"] > 0 and data["runs"][0]["per_clip"][0]["rows"] > 0
    png = out / "horizon.png"
    assert png.stat().st_size > 0
    with Image.open(png) as img:
        img.load()
        assert img.size == (760, 460)
        colours = {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3)[::7]}
        assert len(colours) > 5  # lines, axes, text: not a blank canvas


def test_eval_continue_no_fvd_and_inf_psnr_in_json(tmp_path, capsys, tiny_checkpoint):
    folder = tmp_path / "clips"
    write_video(folder / "still", _static_clip(10))
    write_video(folder / "still2", _static_clip(10)[:, ::-1].copy())
    out = tmp_path / "eval"
    code, _, err = run_cli(capsys, "eval", "continue", "--checkpoint", tiny_checkpoint, "--clips", folder,
                           "--context", 4, "--frames", 6, "--s", "1", "--steps", 2, "--no-fvd", "-o", out,
                           "--quiet")
    assert code == 0, err
    text = (out / "results.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON
    data = json.loads(text)
    assert data["fvd_missing"] == "skipped (--no-fvd)"
    base = next(r for r in data["runs"] if r["kind"] == "baseline")
    assert base["s"] is None and base["psnr_mean"] == math.inf and base["ssim_mean"] == pytest.approx(1.0)
    md = (out / "results.md").read_text()
    assert "FVD is not reported: skipped (--no-fvd)" in md and "| inf / 1.000 |" in md


@pytest.mark.parametrize("case, message", [
    ("short", "a.mp4 has 14 frames; --context 4 + --frames 12 needs 16"),
    ("empty", "holds no videos"),
    ("missing", "no such file or folder"),
    ("s", "--s takes comma-separated integers"),
    ("context", "--context: context must be 1..15 frames"),
    ("output", "is a file; eval writes a folder"),
])
def test_eval_continue_errors(tmp_path, capsys, tiny_checkpoint, clip_dir, case, message):
    args = {"clips": clip_dir, "frames": 6, "context": 4, "s": "0"}
    if case == "short":
        args["frames"] = 12
    elif case == "empty":
        args["clips"] = tmp_path / "empty"
        args["clips"].mkdir()
    elif case == "missing":
        args["clips"] = tmp_path / "nowhere"
    elif case == "s":
        args["s"] = "0,five"
    elif case == "context":
        args["context"] = 16
    out_dir = tmp_path / "out"
    if case == "output":
        out_dir.write_text("a file")
    code, out, err = run_cli(capsys, "eval", "continue", "--checkpoint", tiny_checkpoint, "--clips", args["clips"],
                             "--context", args["context"], "--frames", args["frames"], "--s", args["s"],
                             "--steps", 2, "--no-fvd", "-o", out_dir, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ardiff: error:") and message in lines[0], err
    assert out_dir.is_file() if case == "output" else not out_dir.exists()


# ------------------------------------------------------------------------------------------------
# `ardiff eval fvd`
# ------------------------------------------------------------------------------------------------


def _video_set(folder, seeds, n=16, size=24):
    for seed in seeds:
        write_video(folder / f"v{seed}", bouncing_clip(seed, n, size=size))
    return folder


def test_eval_fvd_two_folders(tmp_path, capsys, stub_i3d):
    real = _video_set(tmp_path / "real", [1, 2, 3])
    fake = _video_set(tmp_path / "fake", [4, 5], size=20)
    code, out, err = run_cli(capsys, "eval", "fvd", real, fake)
    assert code == 0, err
    values = {name: float(value) for name, value in (line.split() for line in out.splitlines())}
    assert set(values) == {"FVD_16", "KVD_16"} and values["FVD_16"] > 0 and values["KVD_16"] > 0
    assert "resized to 224x224" in err  # 24x24 vs 20x20
    # Identical sets: zero FVD, KVD at most zero (unbiased). Comma-separated lists of paths work too.
    code, out, err = run_cli(capsys, "eval", "fvd", f"{real / 'v1'},{real / 'v2'}", real, "--json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["FVD_16"] > 0
    code, out, _ = run_cli(capsys, "eval", "fvd", real, real, "--quiet")
    same = {name: float(value) for name, value in (line.split() for line in out.splitlines())}
    # identical sets: identical features, float64 from there (~1e-12 of round-off on any CPU)
    assert code == 0 and same["FVD_16"] == pytest.approx(0.0, abs=1e-3) and same["KVD_16"] <= 1e-9


def test_streamed_features_equal_engine_fvd(tmp_path):
    """The streaming reader gives the same FVD as engine.metrics.fvd on the same arrays."""
    from engine.metrics import fvd

    stub = _StubI3D()
    real = [bouncing_clip(s, 16, size=24) for s in (1, 2, 3)]
    fake = [bouncing_clip(s, 16, size=24) for s in (4, 5, 6)]
    _video_set(tmp_path / "r", [1, 2, 3])
    _video_set(tmp_path / "f", [4, 5, 6])
    ours = fvd_between_files(tmp_path / "r", tmp_path / "f", stub, 16, with_128=False)
    assert set(ours) == {"FVD_16", "KVD_16"}
    assert ours["FVD_16"] == pytest.approx(fvd(real, fake, stub), rel=1e-6)  # the same features; float64 from there
    feats, seen = video_features(iter(real[0]), stub, [(0, 10), (4, 12), (8, 16)])
    assert seen == 16 and set(feats) == {(0, 10), (4, 12)}  # (8, 16) needs 24 frames


@pytest.mark.parametrize("case, message", [
    ("one", "FVD needs at least 2 videos in each set, the generated set has 1"),
    ("missing", "no such file or folder"),
    ("empty", "holds no videos"),
    ("short", "has 12 frames; FVD over --frames 16 needs 16"),
    ("frames", "--frames must be at least 9"),
    ("text", "notes.txt"),
    ("device", "device must be"),
])
def test_eval_fvd_errors(tmp_path, capsys, stub_i3d, case, message):
    real = _video_set(tmp_path / "real", [1, 2])
    fake = tmp_path / "fake"
    extra = []
    if case == "one":
        _video_set(fake, [3])
    elif case == "missing":
        fake = tmp_path / "nowhere"
    elif case == "empty":
        fake.mkdir()
    elif case == "short":
        _video_set(fake, [3, 4], n=12)
    elif case == "frames":
        _video_set(fake, [3, 4])
        extra = ["--frames", "4"]
    elif case == "device":
        _video_set(fake, [3, 4])
        extra = ["--device", "tpu"]
    elif case == "text":
        (tmp_path / "notes.txt").write_text("hello")
        fake = f"{tmp_path / 'notes.txt'},{real / 'v1'}"
    code, out, err = run_cli(capsys, "eval", "fvd", real, fake, "--quiet", *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ardiff: error:") and message in lines[0], err


def test_small_helpers():
    assert parse_s_values("0, 5,5,10") == [0, 5, 10]
    with pytest.raises(ValueError, match=">= 0"):
        parse_s_values("-1")
    assert horizons_for(24) == [1, 6, 12, 24] and horizons_for(1) == [1] and horizons_for(6) == [1, 2, 3, 6]


def test_reports_from_python(tmp_path, tiny_pipe):
    """The API the trainer and the model card use: evaluate, then write the three files."""
    clips = [bouncing_clip(s, 8, size=16) for s in (7, 8)]
    result = evaluate_continuation(tiny_pipe, clips, context=3, frames=5, s_values=[1], steps=1, seed=4,
                                   warmup=False)
    paths = write_reports(result, tmp_path / "r")
    assert sorted(p.name for p in paths.values()) == ["horizon.png", "results.json", "results.md"]
    assert [c["seed"] for c in result.to_dict()["clips"]] == [4, 5]


# ------------------------------------------------------------------------------------------------
# several clips per video; AR-VAE reconstruction
# ------------------------------------------------------------------------------------------------


def test_load_clips_per_video_takes_consecutive_non_overlapping_clips(tmp_path):
    from engine.evaluation.clips import load_clips

    frames = np.stack([np.full((16, 16, 3), i * 9, np.uint8) for i in range(25)])  # frame i has value 9 i
    write_video(tmp_path / "a", frames)
    clips = load_clips(tmp_path, context=3, frames=5, per_video=4)
    assert [c.name for c in clips] == ["a@0", "a@8", "a@16"]  # 25 frames hold three clips of 8, not four
    for k, clip in enumerate(clips):
        assert clip.frames[:, 0, 0, 0].tolist() == [9 * (8 * k + j) for j in range(8)]
    assert [c.name for c in load_clips(tmp_path, 3, 5)] == ["a"]  # default: the first frames only
    with pytest.raises(ArdiffError, match="at least 1"):
        load_clips(tmp_path, 3, 5, per_video=0)


def test_autoencoder_row_scores_the_round_trip_of_the_truth(tiny_pipe, monkeypatch):
    """The AR-VAE row is the real clip encoded and decoded, scored on the new frames only: it equals
    `reconstruct` on the fitted clip, and a VAE that hands back its input scores perfectly."""
    from engine.evaluation.reconstruction import reconstruct
    from engine.video_io import fit_frames

    clips = [bouncing_clip(seed, 14, size=32) for seed in (1, 2)]
    result = evaluate_continuation(tiny_pipe, clips, context=4, frames=10, s_values=[0], steps=1, seed=0,
                                   i3d=_StubI3D(), warmup=False)
    row = result.runs[-1]
    assert row.kind == "autoencoder" and row.name == AUTOENCODER_NAME and result.baseline.kind == "baseline"
    real, recon = reconstruct(tiny_pipe, fit_frames(clips[1], tiny_pipe.resolution))
    expected = 10 * np.log10(255**2 / np.mean((real[4 + 2].astype(float) - recon[4 + 2].astype(float)) ** 2))
    assert row.psnr.shape == (2, 10) and row.psnr[1, 2] == pytest.approx(expected, rel=1e-6)  # float64 PSNR
    assert np.isfinite(row.psnr).all() and row.fvd["fvd"] > 1e-3
    monkeypatch.setattr("engine.evaluation.reconstruction.reconstruct", lambda pipe, frames: (frames, frames))
    perfect = evaluate_continuation(tiny_pipe, clips, context=4, frames=10, s_values=[0], steps=1, seed=0,
                                    i3d=_StubI3D(), warmup=False)
    assert np.isinf(perfect.runs[-1].psnr).all() and perfect.runs[-1].fvd["fvd"] == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_scores_the_vae_and_a_perfect_vae_scores_inf(tiny_pipe, monkeypatch):
    from engine.evaluation.reconstruction import evaluate_reconstruction, reconstruct

    clip = bouncing_clip(5, 6, size=tiny_pipe.resolution)
    fitted, out = reconstruct(tiny_pipe, clip)
    assert fitted.shape == out.shape == clip.shape and out.dtype == np.uint8
    result = evaluate_reconstruction(tiny_pipe, [clip, clip[::-1].copy()])
    assert result.psnr.shape == (2, 6) and np.isfinite(result.psnr).all()
    expected = 10 * np.log10(255**2 / np.mean((fitted[0].astype(float) - out[0].astype(float)) ** 2))
    assert result.psnr[0, 0] == pytest.approx(expected, rel=1e-6)  # float64 PSNR of uint8 frames

    # A VAE that hands back its input exactly must score inf dB and SSIM 1.
    monkeypatch.setattr(tiny_pipe.vae, "encode", lambda x: x)
    monkeypatch.setattr(tiny_pipe.vae, "decode", lambda z: z)
    perfect = evaluate_reconstruction(tiny_pipe, [clip])
    assert np.isinf(perfect.psnr).all() and np.allclose(perfect.ssim, 1.0)
    with pytest.raises(ArdiffError, match="same number of frames"):
        evaluate_reconstruction(tiny_pipe, [clip, clip[:3]])


def test_eval_vae_cli(tmp_path, capsys, tiny_checkpoint, clip_dir):
    code, out, err = run_cli(capsys, "eval", "vae", "--checkpoint", tiny_checkpoint, "--clips", clip_dir,
                             "--frames", 6, "--clips-per-video", 2, "-o", tmp_path / "vae", "--quiet")
    assert code == 0, err
    data = json.loads((tmp_path / "vae" / "results.json").read_text())
    assert len(data["clips"]) >= 2 and math.isfinite(data["psnr_mean"])
    markdown = (tmp_path / "vae" / "results.md").read_text()
    assert f"PSNR {data['psnr_mean']:.2f} dB" in markdown and "| clip | PSNR | SSIM |" in markdown
    code, _, err = run_cli(capsys, "eval", "vae", "--checkpoint", tiny_checkpoint, "--clips", tmp_path / "nope",
                           "-o", tmp_path / "x", "--quiet")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
