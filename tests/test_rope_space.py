"""Rotary places in the frame (`DiTConfig.rope_space`): what the tables hold, that attention sees relative
places, and that every path through the DiT (cache, step graphs, samplers, configs) agrees with it on."""

import pytest
import torch

from engine.diffusion import DiffusionSchedule
from engine.models import get_preset
from engine.models.dit import DiT, KVCache
from engine.models.layers import apply_rotary
from engine.models.presets import ModelConfig
from engine.sampling import make_sampler
from engine.schedulers import ADScheduler
from tests.helpers import randomize_
from tests.tolerance import assert_reorder_close, dit_stages, reorder_tolerance

STEPS = 8


def config(rope_space: bool = True, preset: str = "tiny") -> ModelConfig:
    cfg = get_preset(preset)
    return cfg.replace(dit=cfg.dit.__class__(**{**cfg.dit.__dict__, "rope_space": rope_space}))


def dit_for(cfg: ModelConfig, seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return randomize_(DiT(cfg), std=0.15).eval()


def test_tables_keep_the_fast_time_pairs_and_give_the_slow_ones_to_rows_and_columns():
    cfg = config(preset="default")  # 16 tokens (a 4 x 4 grid), head size 56: 14 time pairs, 7 + 7 place pairs
    space, plain = DiT(cfg), DiT(config(False, "default"))
    L = cfg.vae.num_latent_tokens
    cos, sin = space._rotary(3, 2, torch.device("cpu"))
    cos0, sin0 = plain._rotary(3, 2, torch.device("cpu"))
    assert cos.shape == cos0.shape == (3 * L, 28)
    assert torch.equal(cos[:, :14], cos0[:, :14]) and torch.equal(sin[:, :14], sin0[:, :14])
    frame, slot = torch.arange(3 * L) // L, torch.arange(3 * L) % L
    # the place pairs: equal for one slot in every frame, different between slots
    assert torch.equal(cos[slot == 5, 14:], cos[slot == 5, 14:][:1].expand(3, -1))
    assert not torch.allclose(cos[(slot == 5) & (frame == 0), 14:], cos[(slot == 6) & (frame == 0), 14:])
    # rows first: slots 5 and 6 share their row (1), so the row pairs agree and the column pairs do not
    assert torch.equal(cos[5, 14:21], cos[6, 14:21]) and not torch.equal(cos[5, 21:], cos[6, 21:])
    assert torch.equal(cos[5, 21:], cos[9, 21:]) and not torch.equal(cos[5, 14:21], cos[9, 14:21])


def test_attention_sees_relative_places():
    """The product of a query and a key rotated at (frame, row, column) depends only on their differences: the
    pattern 'same place, one frame back' scores the same for every place. A table that mixed rows and columns
    up, or gave slots absolute codes, fails this."""
    cfg = config(preset="default")
    dit = DiT(cfg)
    cos, sin = dit._rotary(2, 0, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(56, generator=g), torch.randn(56, generator=g)
    L = cfg.vae.num_latent_tokens

    def score(query_token: int, key_token: int) -> float:
        return float(apply_rotary(q, cos[query_token], sin[query_token])
                     @ apply_rotary(k, cos[key_token], sin[key_token]))

    same_place = [score(L + s, s) for s in range(L)]  # frame 1 to frame 0, every slot to itself
    assert max(same_place) - min(same_place) < 1e-4  # float32 rounding of the rotations only
    one_right = [score(L + s, s + 1) for s in range(L) if s % 4 < 3]  # key one column to the right
    assert max(one_right) - min(one_right) < 1e-4
    assert abs(one_right[0] - same_place[0]) > 1e-2  # and places are told apart


def test_the_flag_reaches_the_network():
    cfg = config()
    z = torch.randn(1, 3, cfg.vae.num_latent_tokens, cfg.vae.latent_dim, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([[0, 300, 900]])
    space, plain = dit_for(cfg), dit_for(config(False))
    plain.load_state_dict(space.state_dict())  # the same weights, read with and without places
    with torch.no_grad():
        assert not torch.allclose(space(z, t), plain(z, t), atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("seed", range(4))
def test_cache_equals_full_window(seed):
    cfg = config()
    dit = dit_for(cfg, seed)
    g = torch.Generator().manual_seed(seed)
    N = 8
    z = torch.randn(2, N, cfg.vae.num_latent_tokens, cfg.vae.latent_dim, generator=g)
    t = torch.randint(0, 1001, (2, N), generator=g)
    full = dit(z, t)
    cache = KVCache()
    x0, kv = dit.forward_cached(z[:, :5], t[:, :5], cache)
    assert_reorder_close(x0, full[:, :5], *dit_stages(cfg))  # other kernel orders: tests/tolerance.py
    cache.append(kv, 5, cfg.vae.num_latent_tokens)
    x0, _ = dit.forward_cached(z[:, 5:], t[:, 5:], cache)
    assert_reorder_close(x0, full[:, 5:], *dit_stages(cfg))


@pytest.mark.parametrize("s,N,C", [(0, 20, 3), (3, 20, 0), (STEPS, 20, 2)])
def test_cached_sampler_equals_reference(s, N, C):
    cfg = config()
    dit = dit_for(cfg)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, N, dit.num_tokens, dit.latent_dim, generator=g)
    context = torch.randn(2, C, dit.num_tokens, dit.latent_dim, generator=g)
    runs = {}
    for name in ("reference", "cached"):
        sampler = make_sampler(name, dit, DiffusionSchedule(), ADScheduler(STEPS, s, 16, 1), prediction="x0-delta")
        with torch.no_grad():
            list(sampler.denoise(context, noise))
        runs[name] = sampler.latents
    # one DiT call's reorder tolerance for the chain, as in tests/test_sampling.py
    assert (runs["cached"] - runs["reference"]).abs().max() <= reorder_tolerance(runs["reference"], *dit_stages(cfg))


def test_config_round_trip_and_checks():
    cfg = config()
    assert ModelConfig.from_dict(cfg.to_dict()).dit.rope_space is True
    old = config(False).to_dict()
    del old["dit"]["rope_space"]  # a checkpoint written before the option: time only, as it was trained
    assert ModelConfig.from_dict(old).dit.rope_space is False
    bad = config().to_dict()
    bad["vae"]["num_latent_tokens"] = 8  # no square grid of places
    with pytest.raises(ValueError, match="rope_space needs a square grid"):
        ModelConfig.from_dict(bad)


def test_a_run_may_switch_places_on_when_it_continues_a_dit():
    from trainer.sources import _architecture

    assert _architecture(config(True)) == _architecture(config(False))
    wider = config(False)
    wider = wider.replace(dit=wider.dit.__class__(**{**wider.dit.__dict__, "hidden": 64}))
    assert _architecture(wider) != _architecture(config(False))
