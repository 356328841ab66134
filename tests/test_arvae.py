import dataclasses

import pytest
import torch

from engine.models.arvae import ARVAE
from engine.models.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from engine.models.presets import get_preset
from tests.tolerance import assert_reorder_close, vae_stages


def tiny_cfg(**changes):
    return dataclasses.replace(get_preset("tiny").vae, **changes)


def make_vae(gate: float = 0.0, **changes) -> ARVAE:
    torch.manual_seed(0)
    vae = ARVAE(tiny_cfg(**changes)).eval()
    if gate:
        with torch.no_grad():
            for block in vae.decoder_blocks:
                block.temporal.gate.fill_(gate)
    return vae


def frames(B: int, N: int, size: int = 16) -> torch.Tensor:
    return torch.rand(B, N, 3, size, size) * 2 - 1


def latents(vae: ARVAE, B: int, N: int) -> torch.Tensor:
    z = torch.randn(B, N, vae.cfg.num_latent_tokens, vae.cfg.latent_dim)
    return torch.nn.functional.normalize(z, dim=-1)


@torch.no_grad()
def test_decoder_is_causal_within_the_temporal_window():
    vae = make_vae(gate=1.0, decoder_depth=3)  # depth 3: a leak into latent states spreads past the window
    W, N = vae.cfg.temporal_window, 7  # N > W: frames beyond the window must not change either
    z = latents(vae, 2, N)
    base = vae.decode(z)
    for j in range(N):
        z2 = z.clone()
        z2[:, j] += 0.5 * torch.randn_like(z2[:, j])
        out = vae.decode(z2)
        for i in range(N):
            if i < j or i >= j + W:
                assert torch.equal(out[:, i], base[:, i]), f"perturbing frame {j} changed frame {i}"
            else:
                assert (out[:, i] - base[:, i]).abs().max() > 1e-4, f"frame {j} does not reach frame {i}"


@torch.no_grad()
def test_frame_depends_only_on_its_window():
    vae = make_vae(gate=1.0, decoder_depth=3)
    W, N = vae.cfg.temporal_window, 7
    z = latents(vae, 1, N)
    full = vae.decode(z)
    for i in range(N):
        alone = vae.decode(z[:, max(0, i - W + 1): i + 1])[:, -1]
        assert_reorder_close(alone, full[:, i], *vae_stages(vae.cfg))  # other kernel orders: tests/tolerance.py


@torch.no_grad()
def test_zero_gate_decodes_each_frame_like_an_image():
    vae = make_vae()  # init: gates at zero, so the image stage sees a per-frame decoder
    z = latents(vae, 2, 5)
    full = vae.decode(z)
    for i in range(5):
        assert_reorder_close(vae.decode(z[:, i: i + 1])[:, 0], full[:, i], *vae_stages(vae.cfg))  # other shapes


@torch.no_grad()
def test_encoder_is_per_frame():
    vae = make_vae()
    x = frames(2, 4)
    base = vae.encode(x)
    for j in range(4):
        x2 = x.clone()
        x2[:, j] = frames(2, 1)[:, 0]
        z = vae.encode(x2)
        for i in range(4):
            if i == j:
                assert (z[:, i] - base[:, i]).abs().max() > 1e-3
            else:
                assert torch.equal(z[:, i], base[:, i]), f"pixel frame {j} changed latent frame {i}"


@pytest.mark.parametrize("window, local", [(4, False), (1, False), (4, True)])
@torch.no_grad()
def test_incremental_decode_matches_batch_decode(window, local):
    vae = make_vae(gate=1.0 if window > 1 else 0.0, temporal_window=window, local_latents=local)
    for N in (1, 3, 4, 9):  # 9 > W exercises eviction of old frames
        z = latents(vae, 2, N)
        state = vae.start_decode(batch_size=2, device="cpu", dtype=torch.float32)
        steps = torch.stack([vae.decode_next(z[:, i], state) for i in range(N)], dim=1)
        assert_reorder_close(steps, vae.decode(z), *vae_stages(vae.cfg))  # other kernel orders: tests/tolerance.py
        assert state.num_frames == N
        for mem in state.memory:  # bounded: at most W - 1 frames per layer
            if window == 1:
                assert mem is None
            else:
                assert mem.shape[:2] == (2, min(N, window - 1))
    state = vae.start_decode()  # no arguments: inferred from the first call
    assert vae.decode_next(latents(vae, 3, 1)[:, 0], state).shape == (3, 3, 16, 16)
    assert state.batch_size == 3


def test_unpatchify_places_patches_row_major_with_pixels_channel_last():
    vae = make_vae()
    p, g = vae.cfg.patch_size, vae.cfg.image_size // vae.cfg.patch_size
    tokens = torch.arange(g * g * p * p * 3, dtype=torch.float32).view(1, 1, g * g, p * p * 3)
    img = vae._unpatchify(tokens)[0, 0]
    for gy, gx, py, px, c in [(0, 1, 2, 3, 1), (1, 0, 3, 2, 2), (2, 3, 0, 1, 0), (3, 3, 3, 3, 2)]:
        assert img[c, gy * p + py, gx * p + px] == tokens[0, 0, gy * g + gx, (py * p + px) * 3 + c]


@torch.no_grad()
def test_shapes_unit_norm_and_latent_scale():
    vae = make_vae()
    cfg = vae.cfg
    x = frames(2, 3)
    z = vae.encode(x)
    assert z.shape == (2, 3, cfg.num_latent_tokens, cfg.latent_dim) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 3, cfg.num_latent_tokens))  # default: a 4-term norm
    recon = vae.decode(z)
    assert recon.shape == x.shape and recon.dtype == torch.float32
    assert torch.equal(vae(x), recon)

    vae.latent_scale.fill_(2.5)
    z_scaled = vae.encode(x)
    torch.testing.assert_close(z_scaled.norm(dim=-1), torch.full((2, 3, cfg.num_latent_tokens), 2.5))
    torch.testing.assert_close(z_scaled, 2.5 * z)
    assert_reorder_close(vae.decode(z_scaled), recon, *vae_stages(cfg))  # decode undoes the scale

    vae.latent_scale.fill_(0.37)
    sd = vae.state_dict()
    assert "latent_scale" in sd
    other = ARVAE(cfg)
    assert other.latent_scale.item() == 1.0
    other.load_state_dict(sd)
    assert other.latent_scale.item() == pytest.approx(0.37)


def test_parameter_groups_partition_and_temporal_path_is_inert_for_single_frames():
    vae = make_vae()
    enc, dec, tmp = (list(vae.encoder_parameters()), list(vae.decoder_parameters()),
                     list(vae.temporal_parameters()))
    ids = [id(p) for p in enc + dec + tmp]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in vae.parameters()}
    gates = {id(b.temporal.gate) for b in vae.decoder_blocks}
    assert gates <= {id(p) for p in tmp} and all(p.abs().sum() == 0 for p in tmp if id(p) in gates)
    assert not list(ARVAE(tiny_cfg(temporal_window=1)).temporal_parameters())

    vae.train()
    vae(frames(2, 1)).square().mean().backward()  # single frames: the image stage
    assert all(p.grad is None for p in tmp)
    assert all(p.grad is not None for p in enc + dec)


def test_forward_backward_gives_finite_nonzero_gradients():
    vae = make_vae(gate=0.5).train()
    x = frames(2, 3)
    loss = (vae(x) - x).abs().mean()
    loss.backward()
    for group in (vae.encoder_parameters, vae.decoder_parameters, vae.temporal_parameters):
        for p in group():
            assert p.grad is not None and torch.isfinite(p.grad).all()
            assert p.grad.abs().max() > 0, f"zero gradient for a parameter of shape {tuple(p.shape)}"


@torch.no_grad()
def test_latent_noise_is_scaled_by_each_channels_std_and_reaches_only_the_decoder():
    torch.manual_seed(0)
    vae = make_vae(gate=0.5, local_latents=True)
    x = frames(2, 3)
    z = vae.encode(x)
    noise = torch.randn_like(z)
    std = z.flatten(0, -2).std(0)
    # exact: the same float32 ops in the same order on both sides
    assert torch.equal(vae(x, noise), vae.decode(z + noise * std))
    assert torch.equal(vae(x, torch.zeros_like(z)), vae(x))
    assert not torch.allclose(vae(x, noise), vae(x))


@torch.no_grad()
def test_bf16_autocast_runs_and_is_close_to_fp32():
    vae = make_vae(gate=0.5)
    x = frames(2, 3)
    ref_z, ref = vae.encode(x), vae(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = vae.encode(x)
        out = vae(x)
        state = vae.start_decode()
        step = vae.decode_next(z[:, 0], state)
    assert z.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(step).all()
    assert (z - ref_z).abs().max() < 0.1
    assert (out.float() - ref).abs().mean() < 0.05 and (out.float() - ref).abs().max() < 0.3


def test_bad_inputs_raise_informative_errors():
    vae = make_vae()
    L, D = vae.cfg.num_latent_tokens, vae.cfg.latent_dim
    cases = [
        (lambda: vae.encode(torch.zeros(3, 16, 16)), "[B, N, 3, H, W]"),
        (lambda: vae.encode(torch.zeros(1, 2, 1, 16, 16)), "got 1"),
        (lambda: vae.encode(torch.zeros(1, 2, 3, 32, 24)), "16x16"),
        (lambda: vae.encode(torch.zeros(1, 2, 3, 32, 24)), "engine.video_io"),
        (lambda: vae.encode(torch.zeros(1, 0, 3, 16, 16)), "N = 0"),
        (lambda: vae.encode(torch.zeros(1, 1, 3, 16, 16, dtype=torch.uint8)), "float"),
        (lambda: vae.decode(torch.zeros(1, L, D)), "[B, N, L, D]"),
        (lambda: vae.decode(torch.zeros(1, 2, L + 1, D)), f"({L}, {D})"),
        (lambda: vae.decode(torch.zeros(1, 2, L, D + 1)), f"({L}, {D + 1})"),
        (lambda: vae.decode(torch.zeros(1, 0, L, D)), "N = 0"),
        (lambda: vae.decode_next(torch.zeros(1, 1, L, D), vae.start_decode()), "[B, L, D]"),
        (lambda: vae.decode_next(torch.zeros(2, L, D - 1), vae.start_decode()), f"({L}, {D})"),
        (lambda: vae.decode_next(torch.zeros(2, L, D), vae.start_decode(batch_size=3)), "batch size 2"),
    ]
    for fn, text in cases:
        with pytest.raises(ValueError) as info:
            fn()
        assert text in str(info.value), f"{text!r} not in {str(info.value)!r}"


def test_discriminator_outputs_a_logit_map():
    disc = PatchDiscriminator(channels=8)
    assert disc(torch.randn(2, 3, 16, 16)).shape == (2, 1, 2, 2)
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    video = torch.randn(2, 4, 3, 16, 16, requires_grad=True)
    logits = disc(video)
    assert logits.shape == (2, 4, 1, 2, 2)
    hinge_g_loss(logits).backward()
    assert video.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    with pytest.raises(ValueError, match="B, C, H, W"):
        disc(torch.randn(3, 16, 16))


def test_hinge_losses():
    full = lambda v: torch.full((2, 1, 4, 4), float(v))  # noqa: E731
    assert hinge_d_loss(full(2), full(-2)).item() == 0.0  # confident and right: no loss
    assert hinge_d_loss(full(0), full(0)).item() == 1.0
    assert hinge_d_loss(full(-1), full(1)).item() == 2.0  # 0.5 * (2 + 2)
    assert hinge_d_loss(full(0.5), full(-2)).item() == 0.25  # only the real margin is violated
    assert hinge_g_loss(full(3)).item() == -3.0


def test_position_embeddings_start_as_a_spatial_prior():
    """Both position tables start as 2-D sin-cos: a patch is more like its neighbour than a far patch, in
    rows and in columns, and the tables are trainable."""
    vae = ARVAE(get_preset("default").vae)
    grid = vae.cfg.image_size // vae.cfg.patch_size
    for table in (vae.enc_pos_embed, vae.dec_pos_embed):
        assert table.requires_grad
        p = torch.nn.functional.normalize(table[0].detach(), dim=-1).view(grid, grid, -1)
        sim = lambda a, b: float((p[a] * p[b]).sum())  # noqa: E731
        assert sim((3, 3), (3, 4)) > sim((3, 3), (3, 7)) and sim((3, 3), (4, 3)) > sim((3, 3), (7, 3))
        assert len({tuple(r.tolist()) for r in table[0].detach().round(decimals=4)}) == grid * grid  # all distinct


def _local_tiny():
    cfg = dataclasses.replace(get_preset("tiny").vae, local_latents=True, encoder_depth=1, decoder_depth=1)
    torch.manual_seed(0)
    return ARVAE(cfg).eval()


def test_local_latents_encode_their_own_region():
    """One encoder layer: latent j reads only its region's patches, so changing region 0 (the top-left
    8x8 pixels of 16x16: 2x2 latents on a 4x4 patch grid) changes latent 0 and no other."""
    vae = _local_tiny()
    frames = torch.rand(1, 1, 3, 16, 16) * 2 - 1
    changed = frames.clone()
    changed[..., :8, :8] = -frames[..., :8, :8]
    with torch.no_grad():
        diff = (vae.encode(frames) - vae.encode(changed)).abs().amax(-1)[0, 0]
    assert diff[0] > 1e-3 and diff[1:].max() == 0


def test_local_latents_decode_into_their_own_region():
    """One decoder layer: a patch reads only its region's latent, so changing latent 3 (bottom-right)
    changes only the bottom-right 8x8 pixels."""
    vae = _local_tiny()
    z = torch.randn(1, 1, 4, vae.cfg.latent_dim)
    changed = z.clone()
    changed[:, :, 3] = -z[:, :, 3]
    with torch.no_grad():
        diff = (vae.decode(z) - vae.decode(changed)).abs().amax(2)[0, 0]  # [16, 16]
    assert diff[8:, 8:].min() > 1e-4 and diff[:8].max() == 0 and diff[:, :8].max() == 0


def test_local_latents_need_a_square_grid_that_tiles_the_patches():
    from engine.models.presets import ModelConfig

    tiny = get_preset("tiny")
    with pytest.raises(ValueError, match="local_latents"):
        ModelConfig(vae=dataclasses.replace(tiny.vae, local_latents=True, num_latent_tokens=6))
    with pytest.raises(ValueError, match="local_latents"):  # a 3x3 latent grid cannot tile 4x4 patches
        ModelConfig(vae=dataclasses.replace(tiny.vae, local_latents=True, num_latent_tokens=9))


def test_local_pca_init_reconstructs_as_the_top_principal_directions():
    """After `init_from_local_pca` the untrained VAE is exactly the rank-D projection of each region onto
    its top singular directions (checked against an SVD), which beats any other linear code of that size."""
    vae = _local_tiny()
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(64, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    frames = smooth * 1.6 - 0.8 + 0.05 * torch.randn(64, 3, 16, 16, generator=gen)
    vae.init_from_local_pca(frames)
    with torch.no_grad():
        recon = vae.decode(vae.encode(frames[:, None]))[:, 0]
    regions = torch.nn.functional.unfold(frames, 8, stride=8).transpose(1, 2).reshape(-1, 192).double()
    top = torch.linalg.svd(regions, full_matrices=False).Vh[: vae.cfg.latent_dim]
    projected = torch.nn.functional.fold((regions @ top.T @ top).float().reshape(64, 4, 192).transpose(1, 2),
                                         16, 8, stride=8)
    assert_reorder_close(recon, projected, *vae_stages(vae.cfg))  # float32 weights of a float64 SVD: tests/tolerance.py
    q = torch.linalg.qr(torch.randn(192, vae.cfg.latent_dim, dtype=torch.float64, generator=gen))[0]
    other = (regions - regions @ q @ q.T).pow(2).mean()  # another orthogonal linear code of the same size
    assert (regions - regions @ top.T @ top).pow(2).mean() < 0.6 * other


def test_local_pca_init_refuses_free_tokens_and_wrong_frames():
    with pytest.raises(ValueError, match="local latents"):
        make_vae().init_from_local_pca(torch.zeros(4, 3, 16, 16))
    with pytest.raises(ValueError, match="frames must be"):
        _local_tiny().init_from_local_pca(torch.zeros(4, 3, 32, 32))


def test_scale_latent_channels_rescales_latents_and_keeps_reconstruction():
    """The per-channel factors are folded into the latent layers: encode scales channel d by scale[d], decode
    gives the same frames as before; a non-positive factor and the TiTok path are refused."""
    vae = _local_tiny()
    for p in vae.parameters():  # live transformer paths next to the linear ones
        torch.nn.init.normal_(p, std=0.1)
    frames = torch.rand(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    scale = torch.linspace(0.2, 5.0, vae.cfg.latent_dim)
    with torch.no_grad():
        z, recon = vae.encode(frames), vae.decode(vae.encode(frames))
        vae.scale_latent_channels(scale)
        z2, recon2 = vae.encode(frames), vae.decode(vae.encode(frames))
    # the folded layers are rounded once more than the originals: float32 reordering, tests/tolerance.py
    assert_reorder_close(z2, z * scale, *vae_stages(vae.cfg))
    assert_reorder_close(recon2, recon, *vae_stages(vae.cfg))
    assert recon.abs().max() > 0.1
    with pytest.raises(ValueError, match="positive"):
        vae.scale_latent_channels(torch.zeros(vae.cfg.latent_dim))
    with pytest.raises(ValueError, match="local latents"):
        ARVAE(get_preset("tiny").vae).scale_latent_channels(scale)


@torch.no_grad()
def test_border_mixer_starts_as_the_identity_and_keeps_decoding_causal_and_incremental():
    # Added to a trained decoder, the mixer must not change a frame until it is trained (a decoder fine-tune
    # starts from the exact model); once trained it changes frames, and decoding stays causal and incremental.
    plain = make_vae(gate=1.0, local_latents=True)
    mixed = ARVAE(tiny_cfg(local_latents=True, mixer_channels=8)).eval()
    missing, unexpected = mixed.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith("mixer.") for k in missing) and not unexpected
    z = latents(plain, 2, 5)
    assert torch.equal(mixed.decode(z), plain.decode(z))

    torch.nn.init.normal_(mixed.mixer.net[-1].weight, std=0.1)  # as if trained
    out = mixed.decode(z)
    assert not torch.allclose(out, plain.decode(z), atol=1e-3)
    state = mixed.start_decode(batch_size=2, device="cpu", dtype=torch.float32)
    steps = torch.stack([mixed.decode_next(z[:, i], state) for i in range(5)], dim=1)
    assert_reorder_close(steps, out, *vae_stages(mixed.cfg))
    later = z.clone()
    later[:, 3:] = latents(plain, 2, 2)
    assert torch.equal(mixed.decode(later)[:, :3], out[:, :3])  # frames 0-2 never see latents 3, 4

    dec = {id(p) for p in mixed.decoder_parameters()}
    assert {id(p) for p in mixed.mixer.parameters()} <= dec
    assert not dec & {id(p) for p in mixed.encoder_parameters()}


@torch.no_grad()
def test_border_mixer_reads_three_pixels_either_side():
    # Three 3x3 layers: enough to meet the neighbouring region across a border, and no further.
    from engine.models.arvae import BorderMixer

    torch.manual_seed(0)
    mixer = BorderMixer(4)
    for conv in (m for m in mixer.net if isinstance(m, torch.nn.Conv2d)):
        torch.nn.init.normal_(conv.weight, std=0.3)
    x = torch.rand(1, 3, 16, 16)
    bumped = x.clone()
    bumped[..., 8, 8] += 1.0
    changed = (mixer(bumped) - mixer(x)).abs().amax(dim=(0, 1)) > 0
    assert changed[8, 5] and changed[8, 11] and changed[5, 8] and changed[11, 11]
    assert not changed[8, 12] and not changed[4, 8] and not changed[8, 4]


def test_mixer_channels_must_not_be_negative():
    from engine.models.presets import ModelConfig

    cfg = get_preset("tiny")
    cfg.vae.mixer_channels = -1
    with pytest.raises(ValueError, match="mixer_channels"):
        ModelConfig.from_dict(cfg.to_dict())
