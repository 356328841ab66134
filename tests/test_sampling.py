import pytest
import torch

from engine.diffusion import DiffusionSchedule
from engine.models import get_preset
from engine.models.dit import DiT
from engine.schedulers import ADScheduler
from engine.sampling import CachedSampler, ReferenceSampler, make_sampler
from tests.helpers import randomize_
from tests.tolerance import dit_stages, reorder_tolerance

STAGES = dit_stages(get_preset("tiny"))  # for the float32 reorder tolerance of one DiT call (tests/tolerance.py)

STEPS = 8


def tiny_dit(num_classes=0):
    cfg = get_preset("tiny")
    if num_classes:
        cfg = cfg.replace(dit=cfg.dit.__class__(**{**cfg.dit.__dict__, "num_classes": num_classes}))
    return randomize_(DiT(cfg), std=0.15).eval(), cfg


def run(name, dit, s, N, C, guidance=1.0, label=None, window=16, seed=0, history=1.0, context_seed=None,
        prediction="x0", context_noise=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, N, dit.num_tokens, dit.latent_dim, generator=g)
    context = torch.randn(2, C, dit.num_tokens, dit.latent_dim, generator=g)
    if context_seed is not None:  # another context, the same noise
        other = torch.Generator().manual_seed(context_seed)
        context = torch.randn(2, C, dit.num_tokens, dit.latent_dim, generator=other)
    sampler = make_sampler(name, dit, DiffusionSchedule(), ADScheduler(STEPS, s, window, 1),
                           guidance_scale=guidance, history_guidance=history, prediction=prediction,
                           context_noise=context_noise)
    with torch.no_grad():
        steps = list(sampler.denoise(context, noise, label))
    return sampler, steps


@pytest.mark.parametrize("s", [0, 1, 3, 5, STEPS])
@pytest.mark.parametrize("N,C", [(12, 0), (9, 4), (40, 0), (40, 3)])
def test_cached_equals_reference(s, N, C):
    dit, _ = tiny_dit()
    ref, ref_steps = run("reference", dit, s, N, C)
    fast, fast_steps = run("cached", dit, s, N, C)
    # one DiT call's reorder tolerance for the whole chain: the updates damp older errors (measured at most 0.05
    # of it, under three kernel sets)
    assert (fast.latents - ref.latents).abs().max() <= reorder_tolerance(ref.latents, *STAGES)
    assert fast.stats.rows == ref.stats.rows == len(ref_steps)
    assert [st.clean_frames for st in fast_steps] == [st.clean_frames for st in ref_steps]


@pytest.mark.parametrize("prediction", ["x0", "x0-prev", "x0-delta", "eps"])
@pytest.mark.parametrize("s,N,C", [(0, 40, 3), (3, 40, 3), (STEPS, 20, 2)])
def test_cached_equals_reference_with_context_noise(prediction, s, N, C):
    dit, _ = tiny_dit()
    ref, _ = run("reference", dit, s, N, C, prediction=prediction, context_noise=100)
    fast, _ = run("cached", dit, s, N, C, prediction=prediction, context_noise=100)
    # the same reorder tolerance as without context noise: the noised clean frames are the same tensors in both
    assert (fast.latents - ref.latents).abs().max() <= reorder_tolerance(ref.latents, *STAGES)
    plain, _ = run("cached", dit, s, N, C, prediction=prediction)
    # guards the equality: the noise really reaches the new frames (a sampler that ignored it would pass above)
    assert (fast.latents[:, C:] - plain.latents[:, C:]).abs().amax(dim=(0, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("sampler", ["reference", "cached"])
def test_context_noise_shows_clean_frames_noised_at_its_level(sampler):
    """Every clean frame the network sees comes with the context-noise timestep and its latents noised with
    one fixed draw per frame (the same each time the frame is seen); frames in flight are untouched."""
    dit, _ = tiny_dit()
    level, C = 100, 3
    schedule = DiffusionSchedule()
    a, b = (float(v) for v in schedule._coefficients(torch.tensor([level]), torch.zeros(1)))
    seen = []
    forward, forward_cached = dit.forward, dit.forward_cached
    dit.forward = lambda z, t, *rest, **kw: (seen.append((z.clone(), t.clone())), forward(z, t, *rest, **kw))[1]
    dit.forward_cached = lambda z, t, *rest, **kw: (seen.append((z.clone(), t.clone())),
                                                    forward_cached(z, t, *rest, **kw))[1]
    fast, _ = run(sampler, dit, 3, 6, C, context_noise=level)
    g = torch.Generator().manual_seed(0)
    torch.randn(2, 6, dit.num_tokens, dit.latent_dim, generator=g)
    context = torch.randn(2, C, dit.num_tokens, dit.latent_dim, generator=g)
    t0, z0 = seen[0][1], seen[0][0]
    assert (t0[:, :C] == level).all() and (t0[:, C:] > level).all()  # the first call: context frames, then new ones
    from engine.sampling import CONTEXT_NOISE_SEED
    eps = torch.randn(2, C + 6, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(CONTEXT_NOISE_SEED))
    # float32: a * z + b * eps computed once each side, a few ulps of values of size ~3
    torch.testing.assert_close(z0[:, :C], a * context + b * eps[:, :C], rtol=0, atol=1e-5)
    assert not any(bool((t == 0).any()) for _, t in seen)  # no call shows a frame as perfectly clean


def test_result_depends_on_context_and_noise():
    """Guards the equality tests against a trivial model: context and noise both reach every new frame."""
    dit, _ = tiny_dit()
    base, _ = run("cached", dit, 3, 20, 3)
    other_seed, _ = run("cached", dit, 3, 20, 3, seed=1)
    diff = (base.latents[:, 3:] - other_seed.latents[:, 3:]).abs().amax(dim=(0, 2, 3))
    assert (diff > 1e-3).all()


@pytest.mark.parametrize("s,N,C", [(0, 12, 3), (3, 40, 3), (5, 9, 4), (STEPS, 40, 2)])
def test_cached_equals_reference_with_history_guidance(s, N, C):
    """Both samplers guide the frames in flight the same way, also once the window has slid; the guidance
    changes the result and costs one history-free call per row that has history."""
    dit, _ = tiny_dit()
    ref, _ = run("reference", dit, s, N, C, history=2.5)
    fast, _ = run("cached", dit, s, N, C, history=2.5)
    assert (fast.latents - ref.latents).abs().max() <= reorder_tolerance(ref.latents, *STAGES)  # as above
    plain, _ = run("cached", dit, s, N, C)
    assert (plain.latents - fast.latents).abs().max() > 1e-3
    assert plain.stats.network_calls < fast.stats.network_calls <= 2 * plain.stats.network_calls


@pytest.mark.parametrize("sampler", ["reference", "cached"])
@pytest.mark.parametrize("s", [0, 3, STEPS])
def test_history_guidance_zero_ignores_every_clean_frame(sampler, s):
    """w = 0 keeps only the history-free call: the new frames then cannot depend on the context (nor on any
    frame that turned clean), so another context gives the same frames (to float rounding)."""
    dit, _ = tiny_dit()
    first, _ = run(sampler, dit, s, 20, 3, history=0.0)
    other, _ = run(sampler, dit, s, 20, 3, history=0.0, context_seed=7)
    assert (first.latents[:, 3:] - other.latents[:, 3:]).abs().max() <= reorder_tolerance(first.latents, *STAGES)
    with_history, _ = run(sampler, dit, s, 20, 3, context_seed=7)
    assert (with_history.latents[:, 3:] - other.latents[:, 3:]).abs().max() > 1e-3


@pytest.mark.parametrize("s", [0, 3])
@pytest.mark.parametrize("history", [1.0, 2.0])
def test_cached_equals_reference_with_guidance(s, history):
    dit, _ = tiny_dit(num_classes=3)
    label = torch.tensor([0, 2])
    ref, _ = run("reference", dit, s, 20, 2, guidance=3.0, label=label, history=history)
    fast, _ = run("cached", dit, s, 20, 2, guidance=3.0, label=label, history=history)
    assert (fast.latents - ref.latents).abs().max() <= reorder_tolerance(ref.latents, *STAGES)  # as above
    unguided, _ = run("cached", dit, s, 20, 2, guidance=1.0, label=label)
    assert (unguided.latents - fast.latents).abs().max() > 1e-3  # guidance changes the result


@pytest.mark.parametrize("s,N,C", [(0, 40, 0), (3, 40, 3), (STEPS, 40, 2), (1, 16, 0)])
def test_work_is_counted_and_bounded(s, N, C):
    dit, _ = tiny_dit()
    fast, _ = run("cached", dit, s, N, C)
    ref, _ = run("reference", dit, s, N, C)
    st = fast.stats
    assert st.active_updates == N * STEPS  # every new frame takes exactly n DDIM steps
    assert st.cache_writes <= C + N  # each frame's clean K/V is written once (refreshes counted apart)
    assert st.frame_forwards <= st.active_updates + st.cache_writes + st.refresh_frames
    assert st.frame_forwards < ref.stats.frame_forwards or s == 0 and N <= 16
    assert st.network_calls == ref.stats.network_calls


def test_clean_frames_are_reported_once_in_order():
    dit, _ = tiny_dit()
    _, steps = run("cached", dit, 2, 30, 3)
    reported = [i for st in steps for i in st.clean_frames]
    assert reported == list(range(3, 33))
    for st in steps:  # the latents handed out are the final ones
        assert st.latents.shape == (2, len(st.clean_frames), 4, 4)


def test_cancel_stops_within_one_row():
    import threading

    dit, _ = tiny_dit()
    cancel = threading.Event()
    sampler = CachedSampler(dit, DiffusionSchedule(), ADScheduler(STEPS, 2, 16, 1))
    noise = torch.randn(1, 10, 4, 4)
    rows = 0
    with torch.no_grad():
        for step in sampler.denoise(torch.zeros(1, 0, 4, 4), noise, cancel=cancel):
            rows += 1
            if rows == 5:
                cancel.set()
    assert rows == 5 and sampler.stats.rows == 5


@pytest.mark.parametrize("prediction,s,N,C", [("eps", 0, 4, 0), ("eps", 3, 20, 2), ("x0-prev", 0, 4, 0),
                                               ("x0-prev", 3, 20, 2), ("x0-prev", STEPS, 20, 1),
                                               ("x0-delta", 0, 4, 0), ("x0-delta", 3, 20, 2),
                                               ("x0-delta", STEPS, 20, 1), ("x0-delta", 1, 40, 3)])
def test_other_predictions_convert_to_x0(prediction, s, N, C):
    """Both samplers convert the output the same way, also when the previous frame lies outside the call
    (x0-prev: cached frames, a slid window); and the conversion changes the result."""
    dit, _ = tiny_dit()
    sched = DiffusionSchedule()
    g = torch.Generator().manual_seed(0)
    context, noise = torch.randn(1, C, 4, 4, generator=g), torch.randn(1, N, 4, 4, generator=g)
    runs = {}
    for name, kind in (("reference", prediction), ("cached", prediction), ("x0", "x0")):
        sampler = make_sampler("reference" if name == "x0" else name, dit, sched, ADScheduler(STEPS, s, 16),
                               prediction=kind)
        with torch.no_grad():
            list(sampler.denoise(context, noise))
        runs[name] = sampler.latents
    assert (runs["reference"] - runs["cached"]).abs().max() <= reorder_tolerance(runs["reference"], *STAGES)
    assert (runs["reference"] - runs["x0"]).abs().max() > 1e-3


@pytest.mark.parametrize("prediction", ["x0-prev", "x0-delta"])
@pytest.mark.parametrize("sampler", ["reference", "cached"])
def test_previous_frame_predictions_with_a_silent_network_repeat_the_last_context_frame(sampler, prediction):
    """x0-prev's and x0-delta's starting point: a DiT whose output is zero (as initialised) continues with the
    last frame."""
    dit, _ = tiny_dit()
    torch.nn.init.zeros_(dit.final.linear.weight)
    torch.nn.init.zeros_(dit.final.linear.bias)
    g = torch.Generator().manual_seed(0)
    context, noise = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 20, 4, 4, generator=g)
    run = make_sampler(sampler, dit, DiffusionSchedule(), ADScheduler(STEPS, 2, 16), prediction=prediction)
    with torch.no_grad():
        list(run.denoise(context, noise))
    torch.testing.assert_close(run.latents[:, 3:], context[:, -1:].expand(-1, 20, -1, -1))


def test_bad_sampler_arguments():
    dit, _ = tiny_dit()
    with pytest.raises(ValueError, match="sampler must be"):
        make_sampler("fast", dit, DiffusionSchedule(), ADScheduler())
    with pytest.raises(ValueError, match="exceeds the model's window"):
        make_sampler("cached", dit, DiffusionSchedule(), ADScheduler(window=32))
    with pytest.raises(ValueError, match="class-conditional"):
        run("cached", dit, 0, 4, 0, guidance=2.0, label=torch.tensor([0, 0]))
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="history guidance must be a number >= 0"):
            run("cached", dit, 0, 4, 0, history=bad)
    with pytest.raises(ValueError, match="not x0-prev"):
        make_sampler("cached", dit, DiffusionSchedule(), ADScheduler(STEPS, 0, 16), prediction="x0-prev",
                     history_guidance=2.0)
