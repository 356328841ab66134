"""Adapt to this clip (engine.adapt, Pipeline.run with adapt_steps): what it learns from, what it holds out,
when its result is used, and that the model as it came is never changed."""

import threading

import numpy as np
import pytest
import torch

import engine.adapt as adapt_mod
from engine.adapt import ADAPT_CLIP_FRAMES, split_clip
from engine.checkpoint import load_checkpoint
from engine.errors import RunError
from engine.pipeline import Adapted, Adapting, Done, Planned, load_pipeline
from engine.run import RunRequest


@pytest.fixture
def pipe(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, device="cpu", precision="fp32")


def still_clip(n=24, seed=0):
    """One random image repeated: every held-out frame equals the frames learnt from, so a DiT that learns the
    clip must predict the held-out frames better."""
    image = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return np.repeat(image[None], n, axis=0)


def request(**kw):
    return RunRequest(**{"new_frames": 3, "s": 2, "steps": 4, "context": 4, **kw})


@pytest.mark.parametrize("frames,train,held", [(6, 4, 2), (12, 9, 3), (24, 18, 6), (128, 120, 8)])
def test_split_holds_out_the_last_quarter_within_bounds(frames, train, held):
    split = split_clip(frames, window=16)
    assert (split.train, split.held_out) == (train, held)


def test_split_refuses_a_clip_too_short_to_hold_frames_out():
    with pytest.raises(RunError, match="at least 6 frames.*this one has 5") as err:
        split_clip(5, window=16)
    assert err.value.field == "adapt_steps"


def test_run_adapts_first_and_keeps_a_better_model(pipe, monkeypatch):
    import engine.pipeline as pipeline_mod

    # the tiny random VAE decodes noise whatever the DiT does, so the continuation check is fixed here (it has
    # tests of its own below); the loss check is real
    psnrs = iter([20.0, 21.0])
    monkeypatch.setattr(pipeline_mod.Pipeline, "_held_out_psnr", lambda self, dit, *a: next(psnrs))
    before = {k: v.clone() for k, v in pipe.checkpoint.dit.state_dict().items()}
    events = list(pipe.run(request(adapt_steps=30), still_clip()))
    kinds = [type(e) for e in events]
    assert kinds[:30] == [Adapting] * 30 and kinds[30] is Adapted and kinds[31] is Planned
    assert [e.step for e in events[:30]] == list(range(1, 31)) and events[29].seconds_left == 0
    adapted = events[30]
    assert adapted.kept and adapted.held_out_after < adapted.held_out_before
    assert "adapted to this clip" in adapted.message and "6 held-out frames after 18" in adapted.message
    # the model as it came is untouched: a later run without adapting is the plain model's
    for k, v in pipe.checkpoint.dit.state_dict().items():
        assert torch.equal(v, before[k]), k
    plain = [e for e in pipe.run(request(), still_clip()) if isinstance(e, Done)][0]
    fresh = load_pipeline(pipe.checkpoint.path, device="cpu", precision="fp32")
    again = [e for e in fresh.run(request(), still_clip()) if isinstance(e, Done)][0]
    assert np.array_equal(plain.video, again.video)
    # and the adapted run sampled with the adapted DiT: its new frames differ from the plain model's
    done = events[-1]
    assert isinstance(done, Done) and not np.array_equal(done.video[4:], plain.video[4:])


def test_a_worse_adaptation_is_not_used(pipe, monkeypatch):
    scores = iter([1.0, 2.0])  # before, after: adapting made it worse
    monkeypatch.setattr(adapt_mod.ClipAdapter, "held_out_loss", lambda self, dit: next(scores))
    events = list(pipe.run(request(adapt_steps=3), still_clip()))
    adapted = next(e for e in events if isinstance(e, Adapted))
    assert not adapted.kept and "did not help" in adapted.message and "model as it came" in adapted.message
    plain = [e for e in pipe.run(request(), still_clip()) if isinstance(e, Done)][0]
    assert np.array_equal(events[-1].video, plain.video)  # sampled exactly as without adapting


def test_a_lower_loss_with_worse_frames_is_not_used(pipe, monkeypatch):
    """The loss alone can mislead: the continuation of the held-out frames must get better too."""
    import engine.pipeline as pipeline_mod

    scores = iter([1.0, 0.5])  # the loss falls
    monkeypatch.setattr(adapt_mod.ClipAdapter, "held_out_loss", lambda self, dit: next(scores))
    psnrs = iter([21.0, 20.5])  # but the frames a person would see get worse
    monkeypatch.setattr(pipeline_mod.Pipeline, "_held_out_psnr", lambda self, dit, *a: next(psnrs))
    events = list(pipe.run(request(adapt_steps=3), still_clip()))
    adapted = next(e for e in events if isinstance(e, Adapted))
    assert not adapted.kept and (adapted.psnr_before, adapted.psnr_after) == (21.0, 20.5)
    assert "PSNR 21.00 -> 20.50 dB" in adapted.message
    plain = [e for e in pipe.run(request(), still_clip()) if isinstance(e, Done)][0]
    assert np.array_equal(events[-1].video, plain.video)


def test_held_out_psnr_is_the_decoded_continuation_against_the_real_frames(pipe, monkeypatch):
    """The continuation check samples the held-out frames with the run's settings from the frames before them
    and scores the decoded frames: here against themselves (100 dB, identical) and against their negative."""
    from engine.adapt import ClipAdapter
    from engine.metrics.image import psnr

    clip = still_clip()
    fitted, latents = pipe.encode_frames(clip)
    adapter = ClipAdapter(pipe.checkpoint.dit, pipe.schedule, latents, pipe.window, "x0", 0, 0, frames=fitted)
    made = {}
    real_decode = pipe._decode

    def spy(latent, state):
        image = real_decode(latent, state)
        made.setdefault("frames", []).append(image)
        return image

    monkeypatch.setattr(pipe, "_decode", spy)
    score = pipe._held_out_psnr(pipe.checkpoint.dit, adapter, request(), 1.0)
    decoded = np.stack(made["frames"])
    split = adapter.split
    assert len(decoded) == split.held_out
    assert score == pytest.approx(float(np.mean(np.minimum(psnr(fitted[split.train:], decoded), 100.0))))
    adapter.frames = np.concatenate([fitted[:split.train], decoded])  # as if the DiT had continued perfectly
    assert pipe._held_out_psnr(pipe.checkpoint.dit, adapter, request(), 1.0) == 100.0


def test_cancel_while_adapting_stops_the_run(pipe):
    cancel = threading.Event()
    seen = []
    for event in pipe.run(request(adapt_steps=50), still_clip(), cancel):
        seen.append(event)
        if isinstance(event, Adapting) and event.step == 3:
            cancel.set()
    adapted = next(e for e in seen if isinstance(e, Adapted))
    assert not adapted.kept and "cancelled after 3 of 50" in adapted.message
    assert sum(isinstance(e, Adapting) for e in seen) == 3
    done = seen[-1]
    assert isinstance(done, Done) and done.cancelled and len(done.video) == 4  # the context, nothing new


def test_bad_adapt_requests_fail_before_any_work(pipe):
    with pytest.raises(RunError, match="from nothing") as err:
        pipe.run(request(adapt_steps=5))
    assert err.value.field == "adapt_steps"
    with pytest.raises(RunError, match="at least 6 frames"):
        pipe.run(request(adapt_steps=5), still_clip(5))
    with pytest.raises(RunError, match="adapt steps must be at least 0"):
        RunRequest(adapt_steps=-1)


def test_adapting_learns_from_at_most_the_last_frames_of_the_clip(pipe, monkeypatch):
    seen = {}
    real = adapt_mod.ClipAdapter.__init__

    def spy(self, dit, schedule, latents, *args, **kw):
        seen["frames"] = latents.shape[1]
        real(self, dit, schedule, latents, *args, **kw)

    monkeypatch.setattr(adapt_mod.ClipAdapter, "__init__", spy)
    pipe.run(request(adapt_steps=1), still_clip(ADAPT_CLIP_FRAMES + 7))
    assert seen["frames"] == ADAPT_CLIP_FRAMES


def test_save_adapted_writes_a_checkpoint_of_the_adapted_dit(pipe, tmp_path):
    with pytest.raises(RunError, match="nothing has been adapted"):
        pipe.save_adapted(tmp_path / "none.safetensors")
    list(pipe.run(request(adapt_steps=5), still_clip()))
    path = pipe.save_adapted(tmp_path / "adapted.safetensors")
    ck = load_checkpoint(path)
    for k, v in pipe.adaptation.dit.state_dict().items():
        assert torch.equal(ck.dit.state_dict()[k], v), k
    stage = ck.meta["recipe"][-1]
    assert stage["stage"] == "adapt" and stage["steps"] == 5 and stage["frames_held_out"] == 6
    assert stage["kept"] == (stage["held_out_loss_after"] < stage["held_out_loss_before"]
                             and stage["held_out_psnr_after"] > stage["held_out_psnr_before"])


# --------------------------------------------------------------------------- the command line


def run_cli(capsys, *argv):
    from engine.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_clip(path, frames):
    from engine.video_io import write_video

    write_video(path, frames, fps=8)
    return path


def test_cli_adapt_reports_and_saves_the_adapted_model(tmp_path, capsys, tiny_checkpoint):
    clip = write_clip(tmp_path / "clip.mp4", still_clip(24))
    out, saved = tmp_path / "out.mp4", tmp_path / "adapted.safetensors"
    code, _, err = run_cli(capsys, "continue", clip, "-o", out, "--checkpoint", tiny_checkpoint, "--frames", 2,
                           "--steps", 3, "--precision", "fp32", "--adapt", 5, "--save-adapted", saved)
    assert code == 0, err
    assert "held-out frames: PSNR" in err and "6 held-out frames after 18 learnt from, 5 steps" in err
    assert out.exists() and load_checkpoint(saved).meta["recipe"][-1]["steps"] == 5


@pytest.mark.parametrize("args,message", [
    (["--adapt", "0"], "--adapt: adapt steps must be at least 1, got 0"),
    (["--adapt", "-3"], "--adapt: adapt steps must be at least 1, got -3"),
    (["--save-adapted", "a.safetensors"], "--save-adapted needs --adapt"),
    (["--adapt", "2", "--save-adapted", "a.pt"], "a checkpoint is a .safetensors file"),
])
def test_cli_bad_adapt_options_are_one_line(tmp_path, capsys, tiny_checkpoint, args, message):
    clip = write_clip(tmp_path / "clip.mp4", still_clip(24))
    code, _, err = run_cli(capsys, "continue", clip, "-o", tmp_path / "o.mp4", "--checkpoint", tiny_checkpoint,
                           *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


def test_cli_adapt_on_a_clip_too_short_is_one_line(tmp_path, capsys, tiny_checkpoint):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(still_clip(1)[0]).save(image)
    code, _, err = run_cli(capsys, "continue", image, "-o", tmp_path / "o.mp4", "--checkpoint", tiny_checkpoint,
                           "--adapt")
    assert code == 2 and "adapting needs a clip of at least 6 frames" in err and "this one has 1" in err
    last = err.strip().splitlines()[-1]  # after the note that the context shrank to the clip
    assert last.startswith("ardiff: error: --adapt:") and "Traceback" not in err
    assert not (tmp_path / "o.mp4").exists()


def test_eval_adapt_scores_every_video_with_and_without(tmp_path, capsys, tiny_checkpoint):
    import json

    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        write_clip(clips / f"v{i}.mp4", still_clip(20, seed=i))
    code, _, err = run_cli(capsys, "eval", "adapt", "--clips", clips, "--checkpoint", tiny_checkpoint, "--adapt", 3,
                           "--frames", 4, "--context", 4, "--steps", 3, "--precision", "fp32", "-o", tmp_path / "r")
    assert code == 0, err
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [c["name"] for c in data["clips"]] == ["v0.mp4", "v1.mp4"]
    for c in data["clips"]:
        assert c["clip_frames"] == 16  # 20 frames less the 4 of truth
        assert c["gain"] == pytest.approx(c["psnr_adapted"] - c["psnr_plain"])
        # a still clip: copying the last frame is (near) perfect, capped at 100 dB per frame
        assert c["psnr_copy_last"] > 40
    assert "mean gain" in err
