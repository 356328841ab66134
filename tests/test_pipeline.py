import threading

import numpy as np
import pytest
import torch

import engine.device as device_mod
from engine.device import resolve_device
from engine.pipeline import Done, FrameReady, Progress, load_pipeline


@pytest.fixture
def pipe(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, device="cpu")


def clip(n=6, h=30, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_continue_streams_frames_in_order(pipe):
    frames = clip()
    events = list(pipe.continue_video(frames, num_new_frames=12, s=3, steps=6, seed=1))
    ready = [e for e in events if isinstance(e, FrameReady)]
    progress = [e for e in events if isinstance(e, Progress)]
    done = events[-1]
    assert isinstance(done, Done) and not done.cancelled and done.num_context == 6
    assert [e.index for e in ready] == list(range(6, 18))
    assert [p.row for p in progress] == list(range(1, len(progress) + 1))
    assert progress[-1].row == progress[-1].total_rows == 6 + 11 * 3
    assert done.video.shape == (18, 16, 16, 3) and done.video.dtype == np.uint8
    for e in ready:  # streamed frames are the frames of the final video
        assert np.array_equal(e.image, done.video[e.index])
    # The first frame arrives as soon as it is clean (row n), long before the last row.
    first = events.index(ready[0])
    rows_before_first = sum(isinstance(e, Progress) for e in events[:first])
    assert rows_before_first == 5  # frame 1 turns clean in row 6 = n; its Progress follows the frame
    assert done.video[:6].shape == (6, 16, 16, 3)
    assert done.stats.frame_forwards > 0


def test_same_seed_same_video_and_samplers_agree(tiny_checkpoint):
    # float32: in bfloat16 the reference's recomputed windows and the cache's keys round apart (pixel levels)
    pipe = load_pipeline(tiny_checkpoint, device="cpu", precision="fp32")
    frames = clip()
    runs = [list(pipe.continue_video(frames, num_new_frames=20, s=2, steps=5, seed=3, sampler=name))[-1].video
            for name in ("cached", "reference", "cached")]
    assert np.array_equal(runs[0], runs[2])
    assert np.abs(runs[0].astype(int) - runs[1].astype(int)).max() <= 1  # latents agree to 1e-4
    other = list(pipe.continue_video(frames, num_new_frames=20, s=2, steps=5, seed=4))[-1].video
    assert not np.array_equal(other[6:], runs[0][6:])


def test_generate_and_context_of_one_frame(pipe):
    events = list(pipe.generate(num_frames=5, s=0, steps=4))
    assert events[-1].video.shape == (5, 16, 16, 3) and events[-1].num_context == 0
    assert sorted(e.index for e in events if isinstance(e, FrameReady)) == list(range(5))
    one = list(pipe.continue_video(clip(1), num_new_frames=3, s=1, steps=3))
    assert one[-1].video.shape == (4, 16, 16, 3)


def test_cancel_ends_stream_within_one_row(pipe):
    cancel = threading.Event()
    threads = threading.active_count()
    seen = []
    for event in pipe.continue_video(clip(), num_new_frames=30, s=2, steps=5, cancel=cancel):
        seen.append(event)
        if isinstance(event, FrameReady) and event.index == 8:
            cancel.set()
            rows_at_cancel = sum(isinstance(e, Progress) for e in seen)
    rows_after = sum(isinstance(e, Progress) for e in seen) - rows_at_cancel
    assert rows_after <= 1
    done = seen[-1]
    assert isinstance(done, Done) and done.cancelled and len(done.video) < 36
    assert threading.active_count() == threads


def test_bad_arguments_fail_at_the_call(pipe):
    with pytest.raises(ValueError, match="new frames must be at least 1"):
        pipe.continue_video(clip(), num_new_frames=0)
    with pytest.raises(ValueError, match="s must"):
        pipe.continue_video(clip(), s=-1)
    with pytest.raises(ValueError, match=r"context must be 1..15"):
        pipe.continue_video(clip(16))
    with pytest.raises(ValueError, match="uint8"):
        pipe.continue_video(clip().astype(np.float32))
    with pytest.raises(ValueError, match="unconditional"):
        pipe.generate(class_label=1)
    with pytest.raises(ValueError, match="steps must be <= 1000"):
        pipe.generate(steps=2000)
    with pytest.raises(ValueError, match="history guidance must be a number >= 0"):
        pipe.continue_video(clip(), history_guidance=-0.5)


def test_device_choice(monkeypatch, tiny_checkpoint):
    assert resolve_device("cpu")[0].type == "cpu"
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: False)
    assert resolve_device("auto") == (torch.device("cpu"), None) or torch.cuda.is_available()
    assert "float32" in load_pipeline(tiny_checkpoint, "cpu").describe()
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: True)
    pipe = load_pipeline(tiny_checkpoint, "cpu")
    assert pipe.autocast_dtype == torch.bfloat16 and "bfloat16 autocast" in pipe.describe()
    events = list(pipe.generate(num_frames=2, s=1, steps=2))  # bf16 autocast runs end to end
    assert events[-1].video.shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.parametrize("native", [False, True])
def test_precision_choice_overrides_the_cpu_default(monkeypatch, tiny_checkpoint, native):
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: native)
    fp32 = load_pipeline(tiny_checkpoint, "cpu", precision="fp32")
    assert fp32.autocast_dtype is None and "float32" in fp32.describe()
    assert ("no native bfloat16" in fp32.describe()) == (not native)  # the reason only where it is the CPU's
    bf16 = load_pipeline(tiny_checkpoint, "cpu", precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    assert ("emulated" in bf16.describe()) == (not native)
    auto = load_pipeline(tiny_checkpoint, "cpu")
    assert auto.autocast_dtype == (torch.bfloat16 if native else None)
    # fp32 is the same on every CPU: a seeded run does not depend on the CPU's matrix units
    frames = [e.video for e in fp32.generate(num_frames=2, s=1, steps=2) if isinstance(e, Done)][0]
    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: not native)
    again = load_pipeline(tiny_checkpoint, "cpu", precision="fp32")
    assert np.array_equal([e.video for e in again.generate(num_frames=2, s=1, steps=2) if isinstance(e, Done)][0],
                          frames)
    with pytest.raises(ValueError, match="precision must be one of"):
        load_pipeline(tiny_checkpoint, "cpu", precision="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_dit_samples_at_the_pipelines_precision_and_the_caller_does_not(tiny_checkpoint, precision):
    """The sampler's DiT calls run under the pipeline's autocast (they ran in float32 whatever the precision),
    and the caller's code between events does not: the stream is a generator, and autocast must not stay on
    while it is suspended."""
    pipe = load_pipeline(tiny_checkpoint, "cpu", precision=precision)
    seen = []
    forward_cached = pipe.dit.forward_cached
    pipe.dit.forward_cached = lambda *args, **kw: seen.append(torch.is_autocast_enabled("cpu")) or forward_cached(
        *args, **kw)
    between = [torch.is_autocast_enabled("cpu") for _ in pipe.continue_video(clip(3), num_new_frames=3, s=1, steps=2)]
    assert len(seen) >= 3 and set(seen) == {precision == "bf16"}
    assert not any(between)


def test_fit_note(pipe):
    assert pipe.fit_note(clip(2, 16, 16)) is None
    assert "16x16" in pipe.fit_note(clip(2, 30, 40))


def _with_sampling_meta(tiny_checkpoint, tmp_path, sampling) -> str:
    from engine.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    path = tmp_path / "guided.safetensors"
    save_checkpoint(path, ck.vae, ck.dit, ck.config, meta={**ck.meta, "sampling": sampling})
    return str(path)


def test_history_guidance_defaults_to_the_checkpoints_own(tiny_checkpoint, tmp_path):
    """A checkpoint recommends its history guidance; continue_video uses it unless told, and says so."""
    guided = load_pipeline(_with_sampling_meta(tiny_checkpoint, tmp_path, {"history_guidance": 2.5}), device="cpu")
    plain = load_pipeline(tiny_checkpoint, device="cpu")
    assert guided.history_guidance == 2.5 and plain.history_guidance == 1.0
    assert "history guidance 2.5" in guided.describe() and "history guidance" not in plain.describe()
    frames = clip()

    def video(pipe, **kw):
        return list(pipe.continue_video(frames, num_new_frames=6, s=2, steps=4, seed=0, **kw))[-1].video

    default = video(guided)
    assert np.array_equal(default, video(plain, history_guidance=2.5))
    assert np.array_equal(video(guided, history_guidance=1.0), video(plain))
    assert not np.array_equal(default[6:], video(plain)[6:])


@pytest.mark.parametrize("sampling", [{"history_guidance": -1}, {"history_guidance": "2"}, {"cfg": 2.0}, [2.0]])
def test_a_bad_sampling_entry_fails_at_load(tiny_checkpoint, tmp_path, sampling):
    from engine.errors import CheckpointError

    with pytest.raises(CheckpointError, match="sampling"):
        load_pipeline(_with_sampling_meta(tiny_checkpoint, tmp_path, sampling), device="cpu")


def test_history_guidance_for_a_model_that_cannot_use_it_fails_at_the_call(tiny_checkpoint, tmp_path):
    """An x0-delta DiT cannot be history-guided: the plan refuses w != 1 naming the field, before any frame;
    w = 1 and the model's own value run."""
    import dataclasses

    from engine.checkpoint import load_checkpoint, save_checkpoint
    from engine.errors import RunError

    ck = load_checkpoint(tiny_checkpoint)
    cfg = dataclasses.replace(ck.config, diffusion=dataclasses.replace(ck.config.diffusion, prediction="x0-delta"))
    path = save_checkpoint(tmp_path / "delta.safetensors", ck.vae, ck.dit, cfg)
    pipe = load_pipeline(path, device="cpu")
    assert pipe.history_guidance_supported is False
    assert load_pipeline(tiny_checkpoint, device="cpu").history_guidance_supported is True
    with pytest.raises(RunError, match="history guidance needs a DiT that predicts x0 or eps") as err:
        pipe.continue_video(clip(), num_new_frames=2, s=1, steps=2, history_guidance=2.0)
    assert err.value.field == "history_guidance"
    for guidance in (None, 1.0):
        assert isinstance(list(pipe.continue_video(clip(), num_new_frames=2, s=1, steps=2,
                                                   history_guidance=guidance))[-1], Done)
