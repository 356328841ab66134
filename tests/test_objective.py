"""The DiT's objective (engine.objective): what the loss counts and what context noise shows the network."""

import torch

from engine.diffusion import DiffusionSchedule
from engine.objective import context_levels, diffusion_loss


def test_context_levels_raise_only_clean_frames_within_the_range():
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([[0, 0, 0, 40, 900]] * 400)
    shown = context_levels(t, 30, g)
    assert torch.equal(shown[:, 3:], t[:, 3:])  # noisy frames untouched
    clean = shown[:, :3]
    assert int(clean.min()) == 0 and int(clean.max()) == 30  # 1,200 draws cover both ends of 0..30
    assert len(clean.unique()) == 31
    assert torch.equal(context_levels(t, 0, g), t)  # off: exactly the compositions


class Echo(torch.nn.Module):
    """Returns its input and records the timesteps it was given."""

    def forward(self, z, t):
        self.t = t
        return z


def test_loss_shows_noised_context_but_counts_only_noisy_frames():
    schedule = DiffusionSchedule()
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(2, 4, 3, 5, generator=g)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.tensor([[0, 0, 10, 500], [0, 20, 20, 20]])
    shown = torch.tensor([[7, 0, 10, 500], [30, 20, 20, 20]])
    net = Echo()
    loss, per_frame = diffusion_loss(net, schedule, z0, t, noise, "x0", shown)
    assert torch.equal(net.t, shown)
    z_shown = schedule.q_sample(z0, shown, noise)
    expected = (z_shown - z0).pow(2).mean(dim=(2, 3)) * (t > 0)
    # the same float32 operations in the same order: equal up to the last bit or two
    torch.testing.assert_close(per_frame, expected, rtol=1e-6, atol=0)
    assert per_frame[0, 0] == 0 and per_frame[1, 0] == 0  # a noised context frame is still not a target
    assert float(per_frame[0, 0]) == 0 and float((z_shown[0, 0] - z0[0, 0]).abs().max()) > 0  # but it was noised
    torch.testing.assert_close(loss, (expected.sum(1) / (t > 0).sum(1)).mean(), rtol=1e-6, atol=0)


def test_x0_delta_chains_each_noisy_frame_from_the_clean_estimate_before_it():
    """x0-delta's x0: clean frames are their own latents; a noisy frame adds the network's output to the x0 of
    the frame before, never to that frame's noisy latents (the loss sees exactly this)."""
    from engine.diffusion import chain_x0

    schedule = DiffusionSchedule()
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(1, 5, 3, 2, generator=g)
    noise = torch.randn(z0.shape, generator=g)
    t = torch.tensor([[0, 0, 300, 600, 900]])
    out = torch.randn(z0.shape, generator=g)
    x0 = chain_x0(out, z0, t == 0)
    torch.testing.assert_close(x0[:, :2], z0[:, :2], rtol=0, atol=0)  # clean: their own latents
    torch.testing.assert_close(x0[:, 2], z0[:, 1] + out[:, 2])
    torch.testing.assert_close(x0[:, 4], z0[:, 1] + out[:, 2] + out[:, 3] + out[:, 4])  # sums of 3 values: ulps

    class Fixed(torch.nn.Module):
        def forward(self, z, t):
            return out

    loss, per_frame = diffusion_loss(Fixed(), schedule, z0, t, noise, "x0-delta")
    torch.testing.assert_close(per_frame, (x0 - z0).pow(2).mean(dim=(2, 3)) * (t > 0), rtol=1e-6, atol=0)
