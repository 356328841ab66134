import numpy as np
import pytest
import torch

from engine.diffusion import DiffusionSchedule


def test_linear_betas_follow_ldm_schedule():
    sched = DiffusionSchedule(T=1000, beta_start=1e-4, beta_end=0.02)
    expected = np.linspace(1e-4**0.5, 0.02**0.5, 1000) ** 2
    np.testing.assert_allclose(sched.betas.numpy(), expected, rtol=1e-12)  # float64 elementwise: ~1e-16 apart
    abar = sched.alphas_cumprod.numpy()
    assert abar[0] == 1.0 and abar.shape == (1001,)
    assert np.all(np.diff(abar) < 0)
    assert abar[-1] < 0.01  # sampling starts from (almost) pure noise
    # The paper's Table 6 value would leave most of the signal at t = T (why DESIGN.md uses 0.02).
    assert DiffusionSchedule(beta_end=0.002).alphas_cumprod[-1] > 0.4


def test_q_sample_zero_timestep_returns_input_exactly():
    sched = DiffusionSchedule()
    z0 = torch.randn(2, 3, 4, 5)
    t = torch.tensor([[0, 10, 0], [999, 0, 1000]])
    z = sched.q_sample(z0, t, torch.randn_like(z0))
    assert torch.equal(z[0, 0], z0[0, 0]) and torch.equal(z[0, 2], z0[0, 2]) and torch.equal(z[1, 1], z0[1, 1])
    assert not torch.equal(z[0, 1], z0[0, 1])


def test_previous_frame_term_repeats_a_clean_predecessor_and_shrinks_a_noisy_one():
    sched = DiffusionSchedule()
    z = torch.randn(2, 4, 3, 5)
    t = torch.tensor([[0, 0, 500, 999], [1000, 0, 0, 7]])
    term = sched.previous_frame_term(z, t)
    assert term.shape == z.shape and not term[:, 0].any()  # frame 0 has no predecessor
    assert torch.equal(term[0, 1], z[0, 0]) and torch.equal(term[0, 2], z[0, 1])  # clean: the frame itself
    abar = sched.alphas_cumprod
    # default float32 tolerance: one elementwise product, rounded the same (IEEE) on every ISA
    torch.testing.assert_close(term[0, 3], z[0, 2] * abar[500].sqrt().float())
    torch.testing.assert_close(term[1, 1], z[1, 0] * abar[1000].sqrt().float())
    assert torch.equal(term[1, 3], z[1, 2])


def test_q_sample_statistics_match_closed_form():
    sched = DiffusionSchedule()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    z0 = torch.full((n, 3, 1), 0.7, dtype=torch.float64)
    t = torch.tensor([1, 400, 1000]).expand(n, 3)
    z = sched.q_sample(z0, t, torch.randn(z0.shape, generator=g, dtype=torch.float64))
    abar = sched.alphas_cumprod[[1, 400, 1000]]
    mean, var = z[..., 0].mean(0), z[..., 0].var(0)
    torch.testing.assert_close(mean, 0.7 * abar.sqrt(), atol=4 * (1 / n) ** 0.5, rtol=0)  # 4 standard errors
    torch.testing.assert_close(var, 1 - abar, atol=0.01, rtol=0.01)  # seeded draws: sampling error ~ 1/sqrt(n)


def test_ddim_grid_ends():
    grid = DiffusionSchedule().ddim_grid(50)
    assert grid.timesteps[0] == 0 and grid.timesteps[-1] == 1000 and len(grid.timesteps) == 51
    assert torch.all(grid.timesteps.diff() > 0)


def test_ddim_step_with_true_x0_lands_on_q_sample():
    sched = DiffusionSchedule()
    grid = sched.ddim_grid(10)
    z0 = torch.randn(2, 4, 8, dtype=torch.float64)
    eps = torch.randn_like(z0)
    k_from = torch.tensor([[10, 7, 3, 1], [5, 5, 2, 9]])
    k_to = torch.tensor([[9, 6, 2, 0], [4, 5, 0, 8]])
    z_t = sched.q_sample(z0, grid.t_of(k_from), eps)
    z_prev = grid.ddim_step(z_t, z0, k_from, k_to)
    expected = sched.q_sample(z0, grid.t_of(k_to), eps)
    torch.testing.assert_close(z_prev, expected, atol=1e-9, rtol=1e-9)  # float64 elementwise: ~1e-15 apart


def test_ddim_step_leaves_unchanged_frames_bit_exact():
    grid = DiffusionSchedule().ddim_grid(50)
    z = torch.randn(1, 3, 5)
    x0 = torch.randn(1, 3, 5)
    k_from = torch.tensor([[50, 20, 0]])
    k_to = torch.tensor([[50, 19, 0]])
    out = grid.ddim_step(z, x0, k_from, k_to)
    assert torch.equal(out[0, 0], z[0, 0]) and torch.equal(out[0, 2], z[0, 2])
    assert not torch.equal(out[0, 1], z[0, 1])
    # Landing on level 0 gives the x0 prediction itself.
    out = grid.ddim_step(z, x0, torch.tensor([[1, 1, 1]]), torch.tensor([[0, 0, 0]]))
    assert torch.equal(out, x0)


def test_ddim_clamp_and_no_noise_added():
    grid = DiffusionSchedule().ddim_grid(5)
    z = torch.randn(1, 1, 4)
    with pytest.raises(ValueError, match="cannot add noise"):
        grid.ddim_step(z, z, torch.tensor([[1]]), torch.tensor([[2]]))
    out = grid.ddim_step(z, torch.full_like(z, 5.0), torch.tensor([[1]]), torch.tensor([[0]]), clip_x0=1.0)
    assert torch.equal(out, torch.ones_like(z))


def test_ddim_step_coefficients_are_memoised_per_levels_shape_and_dtype():
    # The step's coefficients are memoised: a repeated row, another batch, dtype or level pattern must each get
    # their own, and an invalid step must fail every time, not only before the first valid one.
    grid = DiffusionSchedule().ddim_grid(50)
    z, x0 = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    k_from, k_to = np.array([30, 50]), np.array([29, 50])
    first = grid.ddim_step(z[:1], x0[:1], k_from, k_to)
    assert torch.equal(grid.ddim_step(z[:1], x0[:1], k_from, k_to), first)
    assert torch.equal(grid.ddim_step(z, x0, k_from, k_to)[:1], first)  # batch 2 broadcasts the same levels
    double = grid.ddim_step(z[:1].double(), x0[:1].double(), k_from, k_to)
    # float32 c1*x0 + c2*z rounds three times (IEEE on every ISA, fused or not): <= 1.5 u (|c1 x0| + |c2 z|),
    # about 7e-7 for these seeded N(0, 1) draws
    assert double.dtype == torch.float64 and torch.allclose(double.float(), first, atol=1e-6)
    moved = grid.ddim_step(z[:1], x0[:1], k_from, np.array([29, 49]))  # second frame moves now
    assert torch.equal(moved[:, 0], first[:, 0]) and not torch.equal(moved[:, 1], z[:1, 1])
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot add noise"):
            grid.ddim_step(z[:1], x0[:1], k_to, k_from)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"T": 0}, "T must be"), ({"beta_start": 0.0}, "betas"), ({"beta_end": 1.5}, "betas"), ({"kind": "x"}, "kind")],
)
def test_bad_schedule_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionSchedule(**kwargs)


def test_bad_timesteps_and_steps():
    sched = DiffusionSchedule(T=10)
    with pytest.raises(ValueError, match="0..10"):
        sched.q_sample(torch.zeros(1, 1), torch.tensor([[11]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="num_steps"):
        sched.ddim_grid(0)
    with pytest.raises(ValueError, match="num_steps"):
        sched.ddim_grid(11)
