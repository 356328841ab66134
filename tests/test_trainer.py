"""ardiff-train: every stage learns, resume is bit-exact, FoPP is what trains, bad input is one line + exit 2.

`tiny` preset, synthetic or generated data, seeded, fp32 on CPU. DDP lives in test_ddp.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import read_checkpoint_header
from engine.models.presets import get_preset
from tests.tolerance import assert_reorder_close, dit_stages, relative_reorder_tolerance, vae_stages
from trainer import cli
from trainer import stages as stages_mod
from trainer import state as state_mod
from trainer import train as train_mod
from trainer.config import ConfigError, TrainConfig, load_config
from trainer.latent_stats import init_vae_from_pca, normalize_latent_channels
from trainer.state import latest_checkpoint, load_run, read_checkpoint
from trainer.train import train

FAST = ["progress=false", "precision=fp32"]


def cfg_for(stage: str, *sets: str) -> TrainConfig:
    return load_config(stage, "tiny", [*FAST, *sets])


def losses(result, key: str = "loss") -> list[float]:
    return [r[key] for r in result.records]


def assert_falls(values: list[float]) -> None:
    first, last = np.mean(values[:10]), np.mean(values[-10:])
    assert last < 0.7 * first, f"loss did not fall: first 10 {first:.4f}, last 10 {last:.4f}"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """100 steps of the image stage (GAN on from step 50): the VAE the later stages start from."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "vae-image"
    return train(cfg_for("vae-image"), run)


@pytest.fixture(scope="module")
def dit_run(vae_run, tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "diffusion"
    return train(cfg_for("diffusion", f"vae={vae_run.run_dir}"), run)


# --------------------------------------------------------------------------- every stage learns


def test_vae_image_loss_falls_and_latent_scale_is_measured(vae_run):
    assert vae_run.step == 100 and not vae_run.stopped
    assert_falls(losses(vae_run, "rec"))
    assert any("gan_weight" in r for r in vae_run.records[50:])  # the GAN switched on at disc_start
    run = load_run(vae_run.run_dir)
    scale = float(run.ema["latent_scale"])
    assert run.meta["latent_scale_measured"] and 1.2 < scale < 4.0  # unit-norm 4-d tokens: std near 0.5
    assert (vae_run.run_dir / "loss.png").is_file()
    assert len((vae_run.run_dir / "metrics.jsonl").read_text().splitlines()) == 100


def test_vae_temporal_loss_falls(tmp_path):
    start = train(cfg_for("vae-image", "max_steps=2"), tmp_path / "img")
    result = train(cfg_for("vae-temporal", f"vae={start.run_dir}"), tmp_path / "tmp")
    assert_falls(losses(result, "rec"))
    gates = [v for k, v in load_run(result.run_dir).model.items() if k.endswith("temporal.gate")]
    assert gates and all(float(g.abs().max()) > 0 for g in gates)  # the temporal path switched on


def test_vae_temporal_with_the_rest_frozen_trains_only_temporal_parameters(vae_run, tmp_path):
    result = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "temporal_rest_lr_scale=0", "max_steps=3",
                           "gan=true", "disc_start=0"), tmp_path / "t")
    before, after = load_run(vae_run.run_dir).ema, load_run(result.run_dir).model
    changed = {k for k in after if not k.endswith("latent_scale") and not torch.equal(before[k], after[k])}
    assert changed and all(".temporal." in k for k in changed)


def test_diffusion_loss_falls(dit_run):
    assert_falls(losses(dit_run))
    meta = load_run(dit_run.run_dir).meta
    assert meta["vae_source"]["stage"] == "vae-image"
    assert [r["stage"] for r in meta["recipe"]] == ["vae-image", "diffusion"]


# --------------------------------------------------------------------------- resume is bit-exact


def _all_state(run_dir: Path) -> dict[str, torch.Tensor]:
    meta, tensors = read_checkpoint(latest_checkpoint(run_dir))
    return tensors


@pytest.mark.parametrize("stage", ["diffusion", "vae-image"])
def test_resume_is_bitwise_identical(stage, vae_run, tmp_path):
    sets = ["max_steps=20", "checkpoint_every=100", "grad_accum=2", "batch_size=4", "lr_schedule=cosine",
            "num_items=40", "seed=5"]  # 40 items / 4: epochs end at steps 5, 10, 15, 20
    if stage == "diffusion":
        sets.append(f"vae={vae_run.run_dir}")
    else:
        sets.append("disc_start=4")
    straight = train(cfg_for(stage, *sets), tmp_path / "straight")

    def ctrl_c_at_10(step, record):  # the real handler: SIGINT finishes the step, saves, returns
        if step == 10:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job
    first = train(cfg_for(stage, *sets), tmp_path / "split", on_step=ctrl_c_at_10)
    assert first.stopped and first.step == 10
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    second = train(cfg_for(stage, *sets), tmp_path / "split", resume=True)
    assert second.step == 20 and not second.stopped
    a, b = _all_state(straight.run_dir), _all_state(second.run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"not bit-exact after resume: {different[:5]}"
    assert losses(straight) == [r["loss"] for r in map(json.loads, (tmp_path / "split" / "metrics.jsonl")
                                                       .read_text().splitlines())]


def test_resume_refuses_config_changes_and_a_fresh_run_refuses_a_used_dir(vae_run, tmp_path):
    run = tmp_path / "r"
    train(cfg_for("vae-image", "max_steps=2"), run)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg_for("vae-image", "max_steps=2"), run)
    with pytest.raises(ConfigError, match="cannot change batch_size"):
        train(cfg_for("vae-image", "max_steps=4", "batch_size=2"), run, resume=True)
    assert train(cfg_for("vae-image", "max_steps=4"), run, resume=True).step == 4  # max_steps may grow
    again = train(cfg_for("vae-image", "max_steps=4"), run, resume=True)  # finished: nothing to do
    assert again.step == 4 and again.last_checkpoint.name == "step-00000004"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-00000002",
                                                                       "step-00000004"]


# --------------------------------------------------------------------------- FoPP and the ablation switches


def test_diffusion_trains_on_fopp_compositions_by_default(vae_run, tmp_path, monkeypatch):
    from engine.schedulers import fopp

    drawn = []
    original = fopp.FoPPScheduler.sample

    def spy(self, batch, generator=None, device=None, **kw):
        t = original(self, batch, generator=generator, device=device, **kw)
        drawn.append(t.clone())
        return t

    monkeypatch.setattr(fopp.FoPPScheduler, "sample", spy)
    seen = []
    monkeypatch.setattr(stages_mod, "diffusion_loss",
                        lambda dit, sched, z0, t, noise, pred, shown=None: (
                            seen.append(t.clone()), _real_loss(dit, sched, z0, t, noise, pred, shown))[1])
    cfg = load_config("diffusion", None, [*FAST, f"vae={vae_run.run_dir}", "max_steps=6", "batch_size=8"])
    assert cfg.scheduler == "fopp" and cfg.clean_prefix_p == 0.25  # the defaults, with no config file
    train(cfg, tmp_path / "d")
    assert len(drawn) == 6
    t = torch.cat(seen)
    assert t.shape == (48, 16)
    assert bool((t[:, 1:] >= t[:, :-1]).all())  # non-decreasing
    clean = (t == 0).any(1)
    assert 0 < int(clean.sum()) < 48  # the clean-prefix augmentation, on some clips only
    # the clips without a clean prefix are exactly FoPP's draws
    fopp_draws = torch.cat(drawn)
    assert torch.equal(t[~clean], fopp_draws[~clean])


def test_x0_prev_loss_of_a_silent_network_is_the_repeat_last_frame_error():
    from engine.diffusion import DiffusionSchedule
    from engine.objective import diffusion_loss

    class Silent(torch.nn.Module):
        def forward(self, z, t):
            return torch.zeros_like(z)

    sched = DiffusionSchedule()
    z0 = torch.randn(3, 5, 4, 2)
    t = torch.tensor([[0, 0, 50, 60, 70], [0, 0, 300, 300, 900], [0, 10, 10, 20, 999]])
    noise = torch.randn_like(z0)
    loss, per_frame = diffusion_loss(Silent(), sched, z0, t, noise, "x0-prev")
    z_t = sched.q_sample(z0, t, noise)
    expected = torch.zeros(3, 5)
    for b in range(3):
        for f in range(1, 5):
            if t[b, f] > 0:
                prev = z_t[b, f - 1] * sched.alphas_cumprod[t[b, f - 1]].sqrt().float()
                expected[b, f] = (prev - z0[b, f]).pow(2).mean()
    # default float32 tolerance (1.3e-6 relative): means of 8 squares, summed in another order on another CPU
    # by at most a few u = 6e-8
    torch.testing.assert_close(per_frame, expected)
    torch.testing.assert_close(loss, (expected.sum(1) / (t > 0).sum(1)).mean())


def _real_loss(*args):
    from engine.objective import diffusion_loss

    return diffusion_loss(*args)


@pytest.mark.parametrize("sets", [
    ["scheduler=equal", "clean_prefix_p=0"],
    ["scheduler=independent"],
    ["scheduler=naive-nondecreasing"],
    ["prediction=eps", "attention=full"],
    ["prediction=x0-prev"],
    ["prediction=x0-delta"],
    ["context_noise=50", "clean_prefix_p=1"],
])
def test_ablation_switches_are_real_code_paths(sets, vae_run, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(stages_mod, "diffusion_loss",
                        lambda dit, sched, z0, t, noise, pred, shown=None: (
                            seen.append((dit, t.clone(), pred, shown)),
                            _real_loss(dit, sched, z0, t, noise, pred, shown))[1])
    cfg = cfg_for("diffusion", f"vae={vae_run.run_dir}", "max_steps=2", *sets)
    train(cfg, tmp_path / "a")
    dit, t, pred, shown = seen[0]
    assert pred == cfg.prediction and dit.causal == (cfg.attention == "causal")
    clean = t == 0
    if cfg.context_noise:  # clean frames shown at levels 0..50 (some above 0), the rest as drawn
        assert bool(clean.any()) and bool((shown[clean] <= 50).all()) and bool((shown[clean] > 0).any())
        assert torch.equal(shown[~clean], t[~clean])
        assert load_run(tmp_path / "a").model_config.diffusion.context_noise == 50  # the sampler's level
    else:
        assert torch.equal(shown, t)
    if cfg.scheduler == "equal":
        assert bool((t == t[:, :1]).all())
    if cfg.scheduler == "independent":
        assert bool((t[:, 1:] < t[:, :-1]).any())
    assert load_run(tmp_path / "a").model_config.dit.attention == cfg.attention


# --------------------------------------------------------------------------- package


def test_package_gives_the_checkpoint_the_engine_loads(vae_run, dit_run, tmp_path):
    from engine.checkpoint import load_checkpoint

    out = tmp_path / "model.safetensors"
    assert cli.main(["package", "--vae", str(vae_run.run_dir), "--diffusion", str(dit_run.run_dir),
                     "-o", str(out)]) == 0
    ck = load_checkpoint(out)
    run = load_run(dit_run.run_dir)
    for k, v in run.ema.items():  # EMA weights, not the raw ones
        assert torch.equal(ck.dit.state_dict()[k], v)
    assert ck.meta["latent_scale"] == pytest.approx(float(ck.vae.latent_scale))  # a float32 copy of one number
    assert ck.meta["steps"] == {"vae-image": 100, "diffusion": 100}
    assert ck.meta["data"]["diffusion"]["spec"] == "synthetic:bouncing"
    small = tmp_path / "bf16.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(small), "--dtype", "bf16"]) == 0
    assert small.stat().st_size < out.stat().st_size
    with torch.no_grad():
        frames = torch.rand(1, 2, 3, 16, 16) * 2 - 1
        z = ck.vae.encode(frames)
        assert ck.dit(z, torch.tensor([[0, 500]])).shape == z.shape


def test_package_records_the_history_guidance_to_sample_with(vae_run, dit_run, tmp_path, capsys):
    from engine.checkpoint import load_checkpoint
    from engine.pipeline import load_pipeline

    out = tmp_path / "guided.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(out), "--history-guidance", "2"]) == 0
    assert load_checkpoint(out).meta["sampling"] == {"history_guidance": 2.0}
    assert load_pipeline(out, device="cpu").history_guidance == 2.0
    again = tmp_path / "again.safetensors"  # packaging a packaged checkpoint keeps it
    assert cli.main(["package", "--diffusion", str(out), "--vae", str(out), "-o", str(again)]) == 0
    assert load_checkpoint(again).meta["sampling"] == {"history_guidance": 2.0}
    plain = tmp_path / "plain.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(plain)]) == 0
    assert "sampling" not in load_checkpoint(plain).meta
    bad = tmp_path / "bad.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(bad), "--history-guidance", "-1"]) == 2
    assert "history_guidance must be a number >= 0" in capsys.readouterr().err and not bad.exists()
    # a DiT that predicts a correction to the frame before cannot be history-guided: refused, nothing written
    import dataclasses

    from engine.checkpoint import save_checkpoint
    ck = load_checkpoint(plain)
    cfg = dataclasses.replace(ck.config, diffusion=dataclasses.replace(ck.config.diffusion, prediction="x0-delta"))
    delta = save_checkpoint(tmp_path / "delta.safetensors", ck.vae, ck.dit, cfg, meta=ck.meta)
    assert cli.main(["package", "--diffusion", str(delta), "-o", str(bad), "--history-guidance", "2"]) == 2
    assert "predicts x0 or eps, not x0-delta" in capsys.readouterr().err and not bad.exists()


def test_load_run_reads_one_chosen_checkpoint(tmp_path):
    from trainer.state import checkpoints_dir

    train(cfg_for("vae-image", "max_steps=3", "checkpoint_every=1", "keep_checkpoints=5"), tmp_path / "r")
    steps = sorted(checkpoints_dir(tmp_path / "r").glob("step-*"))
    assert [load_run(p).step for p in steps] == [1, 2, 3]
    assert load_run(tmp_path / "r").step == 3  # the run dir: its newest checkpoint
    assert not torch.equal(load_run(steps[0]).model["patch_embed.proj.weight"],
                           load_run(steps[2]).model["patch_embed.proj.weight"])


def test_package_refuses_a_different_vae(vae_run, dit_run, tmp_path):
    other = train(cfg_for("vae-image", "max_steps=1", "seed=9"), tmp_path / "other")
    assert cli.main(["package", "--vae", str(other.run_dir), "--diffusion", str(dit_run.run_dir),
                     "-o", str(tmp_path / "m.safetensors")]) == 2
    assert not (tmp_path / "m.safetensors").exists()


def test_decoder_fine_tune_keeps_the_latents_and_packages_with_the_dit(vae_run, dit_run, tmp_path):
    # train_encoder = false: a GAN fine-tune of the decoder leaves the encoder (and so every latent the DiT was
    # trained on) bit for bit, keeps the latent scale, and packages with the DiT, from its run or its checkpoint.
    from engine.checkpoint import load_checkpoint
    from engine.models.arvae import ARVAE

    tuned = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "train_encoder=false", "max_steps=3",
                          "gan=true", "disc_start=0", "temporal_rest_lr_scale=1.0"), tmp_path / "dec")
    before, after = load_run(vae_run.run_dir).ema, load_run(tuned.run_dir).ema
    vae = ARVAE(load_run(vae_run.run_dir).model_config.vae)
    encoder = {n for n, p in vae.named_parameters() if id(p) in {id(q) for q in vae.encoder_parameters()}}
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in after if k not in encoder and k != "latent_scale")
    assert torch.equal(before["latent_scale"], after["latent_scale"])
    assert load_run(tuned.run_dir).meta["recipe"][-1]["train_encoder"] is False

    from_run = tmp_path / "from-run.safetensors"
    assert cli.main(["package", "--vae", str(tuned.run_dir), "--diffusion", str(dit_run.run_dir),
                     "-o", str(from_run)]) == 0
    original = tmp_path / "original.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(original)]) == 0
    from_ckpt = tmp_path / "from-ckpt.safetensors"
    assert cli.main(["package", "--vae", str(tuned.run_dir), "--diffusion", str(original),
                     "-o", str(from_ckpt)]) == 0
    a, b, c = (load_checkpoint(p) for p in (original, from_run, from_ckpt))
    frames = torch.rand(1, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a.vae.encode(frames), b.vae.encode(frames))  # the DiT's latents, unchanged
        assert not torch.equal(a.vae.decode(a.vae.encode(frames)), b.vae.decode(b.vae.encode(frames)))
    for ck in (b, c):
        assert all(torch.equal(v, a.dit.state_dict()[k]) for k, v in ck.dit.state_dict().items())
        assert all(torch.equal(v, b.vae.state_dict()[k]) for k, v in ck.vae.state_dict().items())
        assert ck.meta["steps"] == {"vae-image": 100, "diffusion": 100, "vae-temporal (decoder only)": 3}
    # a VAE with another encoder is still refused, from a checkpoint too
    other = train(cfg_for("vae-image", "max_steps=1", "seed=9"), tmp_path / "other")
    assert cli.main(["package", "--vae", str(other.run_dir), "--diffusion", str(original),
                     "-o", str(tmp_path / "m.safetensors")]) == 2
    with pytest.raises(ConfigError, match="train_encoder = false needs a trained VAE"):
        train(cfg_for("vae-image", "train_encoder=false", "max_steps=1"), tmp_path / "bad")


@pytest.mark.parametrize("option, key", [("decoder_latent_noise=0.5", "decoder_latent_noise"),
                                         ("seam_weight=2", "seam_weight")])
def test_decoder_fine_tune_options_reach_the_decoder(vae_run, tmp_path, option, key):
    # The same decoder-only fine-tune with and without the option: the encoder stays bit for bit, the decoders
    # differ (the option changed the decoder's gradients), and the recipe says which was used.
    plain = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "train_encoder=false", "max_steps=2",
                          "gan=false", "temporal_rest_lr_scale=1.0"), tmp_path / "plain")
    tuned = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "train_encoder=false", "max_steps=2",
                          "gan=false", "temporal_rest_lr_scale=1.0", option), tmp_path / "tuned")
    plain, tuned_run = load_run(plain.run_dir), load_run(tuned.run_dir)
    assert plain.meta["recipe"][-1][key] == 0.0
    assert tuned_run.meta["recipe"][-1][key] == float(option.split("=")[1])
    source = load_run(vae_run.run_dir).ema
    assert torch.equal(source["encoder_blocks.0.attn.qkv.weight"], tuned_run.ema["encoder_blocks.0.attn.qkv.weight"])
    assert not torch.equal(plain.ema["to_pixels.weight"], tuned_run.ema["to_pixels.weight"])
    if key == "seam_weight":
        assert all(r["seam"] > 0 for r in tuned.records)
    with pytest.raises(ConfigError, match=key):
        cfg_for("diffusion", "vae=x", option)
    with pytest.raises(ConfigError, match=key):
        cfg_for("vae-temporal", "vae=x", f"{key}=-1")


def test_a_decoder_fine_tune_adds_the_border_mixer_and_the_dit_stays_valid(vae_run, dit_run, tmp_path):
    # mixer_channels added to a VAE without one: the run starts from the exact source (the mixer is the identity),
    # trains it, keeps the encoder; the package pairs it with a DiT trained on the mixer-less VAE, and records it.
    from engine.checkpoint import load_checkpoint

    mixed = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "train_encoder=false", "max_steps=2",
                          "gan=false", "temporal_rest_lr_scale=1.0", "mixer_channels=4"), tmp_path / "mixed")
    run = load_run(mixed.run_dir)
    assert run.model_config.vae.mixer_channels == 4 and run.meta["recipe"][-1]["mixer_channels"] == 4
    assert run.ema["mixer.net.4.weight"].abs().sum() > 0  # trained away from its zero start
    source = load_run(vae_run.run_dir).ema
    assert torch.equal(source["encoder_blocks.0.attn.qkv.weight"], run.ema["encoder_blocks.0.attn.qkv.weight"])

    out = tmp_path / "m.safetensors"
    assert cli.main(["package", "--vae", str(mixed.run_dir), "--diffusion", str(dit_run.run_dir), "-o", str(out)]) == 0
    ck = load_checkpoint(out)
    assert ck.config.vae.mixer_channels == 4 and ck.vae.mixer is not None
    assert ck.config.dit == load_run(dit_run.run_dir).model_config.dit

    # a DiT may train on the mixed VAE's latents (they are the source's), and continue its run on it
    more = train(cfg_for("diffusion", f"vae={mixed.run_dir}", "max_steps=1"), tmp_path / "dit-on-mixed")
    assert load_run(more.run_dir).model_config.vae.mixer_channels == 0
    # continuing a mixed VAE without its mixer would drop trained weights: refused, naming the key
    with pytest.raises(ConfigError, match="mixer_channels=4 .wanted 0"):
        train(cfg_for("vae-temporal", f"vae={mixed.run_dir}", "train_encoder=false", "max_steps=1", "gan=false"),
              tmp_path / "dropped")
    with pytest.raises(ConfigError, match="mixer_channels"):
        cfg_for("diffusion", "vae=x", "mixer_channels=4")
    with pytest.raises(ConfigError, match="mixer_channels"):
        cfg_for("vae-temporal", "vae=x", "mixer_channels=-1")


def test_package_records_every_decoder_fine_tune_of_a_chain(vae_run, dit_run, tmp_path):
    # A decoder fine-tuned twice (say a temporal stage, then a seam fine-tune of it): the package's recipe keeps
    # both stages after the DiT's, not only the last.
    first = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", "train_encoder=false", "max_steps=2",
                          "gan=false"), tmp_path / "first")
    second = train(cfg_for("vae-temporal", f"vae={first.run_dir}", "train_encoder=false", "max_steps=1",
                           "gan=false", "seam_weight=2"), tmp_path / "second")
    out = tmp_path / "m.safetensors"
    assert cli.main(["package", "--vae", str(second.run_dir), "--diffusion", str(dit_run.run_dir), "-o", str(out)]) == 0
    _, meta = read_checkpoint_header(out)
    assert meta["steps"] == {"vae-image": 100, "diffusion": 100, "vae-temporal (decoder only)": 2,
                             "vae-temporal (decoder only) #2": 1}
    assert [r.get("seam_weight", 0.0) for r in meta["recipe"][2:]] == [0.0, 2.0]


def test_border_gradient_loss_counts_only_steps_across_region_borders():
    from trainer.losses import border_gradient_loss

    g = torch.Generator().manual_seed(0)
    real = torch.rand(1, 2, 3, 8, 8, generator=g)
    assert border_gradient_loss(real, real, 4) == 0
    inside = real.clone()
    inside[..., 1, 1] += 0.5  # a change away from the borders (columns and rows 3|4) leaves the loss at 0
    assert border_gradient_loss(inside, real, 4) == 0
    step = real.clone()
    step[..., :, 4:] += 0.3  # a step of 0.3 across the vertical border: 8 rows x 3 channels x 2 frames of 0.3
    across = 2 * 3 * 8  # the vertical border's steps; the horizontal border's (as many) do not change
    assert border_gradient_loss(step, real, 4).item() == pytest.approx(0.3 * across / (2 * across), rel=1e-6)


# --------------------------------------------------------------------------- messy data


def test_vae_image_continues_a_trained_vae(vae_run, dit_run, tmp_path):
    """vae=PATH in the image stage starts from that VAE's EMA weights (run or packaged model); the recipe and
    the packaged steps show both image stages; PCA init (a new VAE) and vae=PATH exclude each other."""
    from engine.checkpoint import load_checkpoint

    packaged = tmp_path / "m.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(packaged)]) == 0
    # a learning rate too small to move anything: the run's weights are the source's
    for source, name in ((str(vae_run.run_dir), "from-run"), (str(packaged), "from-model")):
        still = train(cfg_for("vae-image", f"vae={source}", "max_steps=1", "lr=1e-12", "warmup_steps=0", "gan=false"),
                      tmp_path / name)
        model = load_run(still.run_dir).model
        reference = load_run(vae_run.run_dir).ema if name == "from-run" else load_checkpoint(packaged).vae.state_dict()
        # lr 1e-12: AdamW moves each weight by about lr, 1e6 times less than atol; nothing is reduced, so no CPU
        # dependence
        assert all(torch.allclose(model[k], v.float(), atol=1e-6) for k, v in reference.items()
                   if k != "latent_scale")
        recipe = load_run(still.run_dir).meta["recipe"]
        assert [r["stage"] for r in recipe] == ["vae-image", "vae-image"] and recipe[-1]["vae"] == str(
            Path(source).resolve())
    fresh = load_run(train(cfg_for("vae-image", "max_steps=1", "seed=3", "gan=false"), tmp_path / "fresh").run_dir)
    assert not torch.allclose(fresh.model["patch_embed.proj.weight"], model["patch_embed.proj.weight"])
    dit = train(cfg_for("diffusion", f"vae={still.run_dir}", "max_steps=1"), tmp_path / "dit")
    out = tmp_path / "continued.safetensors"
    assert cli.main(["package", "--diffusion", str(dit.run_dir), "-o", str(out)]) == 0
    assert list(load_checkpoint(out).meta["steps"]) == ["vae-image", "vae-image (continued)", "diffusion"]
    with pytest.raises(ConfigError, match="cannot be combined"):
        cfg_for("vae-image", f"vae={packaged}", "pca_init_frames=10")


def test_packaged_steps_keep_every_stage_in_order():
    from trainer.package import steps_by_stage

    recipe = [{"stage": "vae-image", "steps": 10}, {"stage": "vae-temporal", "steps": 2},
              {"stage": "vae-image", "steps": 30, "vae": "/a"}, {"stage": "vae-temporal", "steps": 4},
              {"stage": "vae-temporal", "steps": 5, "train_encoder": False}, {"stage": "diffusion", "steps": 7}]
    steps = steps_by_stage(recipe)
    assert list(steps.items()) == [("vae-image", 10), ("vae-temporal", 2), ("vae-image (continued)", 30),
                                   ("vae-temporal #2", 4), ("vae-temporal (decoder only)", 5), ("diffusion", 7)]


def test_init_dit_continues_a_dit_on_its_own_latents(vae_run, dit_run, tmp_path):
    """init_dit starts the DiT from a packaged model's (or a run's) EMA weights; the recipe keeps every stage
    it went through, and a DiT trained on another VAE's latents is refused."""
    from engine.checkpoint import load_checkpoint

    packaged = tmp_path / "m.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(packaged)]) == 0
    source = load_checkpoint(packaged).dit.state_dict()
    # a learning rate too small to move anything: the run's weights are the source's
    still = train(cfg_for("diffusion", f"vae={packaged}", f"init_dit={packaged}", "max_steps=1", "lr=1e-12",
                          "warmup_steps=0"), tmp_path / "still")
    model = load_run(still.run_dir).model
    assert all(torch.allclose(model[k], v, atol=1e-6) for k, v in source.items())  # lr 1e-12: as above
    fresh = train(cfg_for("diffusion", f"vae={packaged}", "max_steps=1", "lr=1e-12", "warmup_steps=0"),
                  tmp_path / "fresh")
    assert not torch.allclose(load_run(fresh.run_dir).model["x_embed.weight"], source["x_embed.weight"])
    # a fresh DiT on a packaged VAE does not inherit the packaged DiT's diffusion stage; a continued one does
    assert [r["stage"] for r in load_run(fresh.run_dir).meta["recipe"]] == ["vae-image", "diffusion"]
    recipe = load_run(still.run_dir).meta["recipe"]
    assert [r["stage"] for r in recipe] == ["vae-image", "diffusion", "diffusion"]
    assert recipe[-1]["init_dit"] == str(packaged.resolve())
    out = tmp_path / "continued.safetensors"
    assert cli.main(["package", "--diffusion", str(still.run_dir), "-o", str(out)]) == 0
    assert load_checkpoint(out).meta["steps"] == {"vae-image": 100, "diffusion": 100, "diffusion (continued)": 1}
    # from the run dir too; and refused on another VAE's latents, or outside the diffusion stage
    train(cfg_for("diffusion", f"vae={vae_run.run_dir}", f"init_dit={dit_run.run_dir}", "max_steps=1"),
          tmp_path / "from-run")
    other = train(cfg_for("vae-image", "max_steps=1", "seed=9"), tmp_path / "other-vae")
    with pytest.raises(ConfigError, match="latents of another VAE"):
        train(cfg_for("diffusion", f"vae={other.run_dir}", f"init_dit={packaged}", "max_steps=1"), tmp_path / "x")
    with pytest.raises(ConfigError, match="for the diffusion stage"):
        cfg_for("vae-image", f"init_dit={packaged}")


def test_init_dit_other_vae_warm_starts_on_another_vaes_latents(dit_run, tmp_path):
    """init_dit_other_vae takes the weights of a DiT trained on another VAE's latents as a starting point only:
    the recipe is this run's VAE's, and the package names the stage a warm start."""
    from engine.checkpoint import load_checkpoint

    packaged = tmp_path / "m.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(packaged)]) == 0
    source = load_checkpoint(packaged).dit.state_dict()
    other = train(cfg_for("vae-image", "max_steps=1", "seed=9"), tmp_path / "other-vae")
    warm = train(cfg_for("diffusion", f"vae={other.run_dir}", f"init_dit={packaged}", "init_dit_other_vae=true",
                         "max_steps=1", "lr=1e-12", "warmup_steps=0"), tmp_path / "warm")
    run = load_run(warm.run_dir)
    assert all(torch.allclose(run.model[k], v, atol=1e-6) for k, v in source.items())  # lr 1e-12: as above
    assert [r["stage"] for r in run.meta["recipe"]] == ["vae-image", "diffusion"]  # not the source's past
    assert run.meta["recipe"][-1]["init_dit_other_vae"] is True
    out = tmp_path / "warm.safetensors"
    assert cli.main(["package", "--diffusion", str(warm.run_dir), "-o", str(out)]) == 0
    assert load_checkpoint(out).meta["steps"] == {"vae-image": 1, "diffusion (warm start)": 1}
    with pytest.raises(ConfigError, match="needs init_dit"):
        cfg_for("diffusion", "init_dit_other_vae=true")


def test_a_folder_with_bad_files_trains_and_reports_them(vae_run, tmp_path, capsys):
    from engine.video_io import write_video
    from trainer.data import DatasetWarning
    from trainer.synthetic import bouncing_clip

    root = tmp_path / "videos"
    root.mkdir()
    good = write_video(root / "good.mp4", bouncing_clip(1, 24, size=32))
    write_video(root / "short.mp4", bouncing_clip(2, 3, size=32))  # shorter than a 4-frame clip
    (root / "corrupt.mp4").write_bytes(Path(good).read_bytes()[:1500])
    (root / "empty.mp4").write_bytes(b"")
    (root / "notes.txt").write_text("not a video")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg_for("vae-temporal", f"vae={vae_run.run_dir}", f"data={root}", "max_steps=3",
                               "num_frames=4", "batch_size=2", f"data_cache={tmp_path / 'cache'}"), tmp_path / "r")
    assert result.step == 3
    bad = [str(w.message) for w in caught if issubclass(w.category, DatasetWarning)]
    for name in ("short.mp4", "corrupt.mp4", "empty.mp4", "notes.txt"):
        assert sum(name in m for m in bad) == 1, (name, bad)
    skipped = load_run(result.run_dir).meta["data"]["skipped"]
    assert skipped == {"corrupt": 1, "empty": 1, "not_video": 1, "too_short": 1}
    assert "skipped: 1 corrupt, 1 empty, 1 not_video, 1 too_short" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input: one line, exit 2


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = [l for l in err.splitlines() if l.startswith("ardiff-train: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_unknown_key_and_wrong_types_are_one_line_errors(tmp_path, capsys):
    code, err = run_cli(["diffusion", "--config", "tiny", "--set", "learning_rate=1", "--run-dir", str(tmp_path)],
                        capsys)
    assert_one_line_error(code, err, "unknown config key 'learning_rate'")
    code, err = run_cli(["vae-image", "--set", "batch_size=eight", "--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "batch_size", "integer")
    bad = tmp_path / "bad.toml"
    bad.write_text('batch_size = "8"\n')
    code, err = run_cli(["vae-image", "--config", str(bad), "--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "batch_size", "integer", "str")
    bad.write_text("[vae-imag]\nlr = 1.0\n")
    code, err = run_cli(["vae-image", "--config", str(bad), "--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "unknown table [vae-imag]")
    code, err = run_cli(["vae-image", "--set", "scheduler=fop", "--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "scheduler", "fopp")
    code, err = run_cli(["vae-image", "--set", "perceptual_weights=lpips.pth", "--run-dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "not supported yet")
    assert not list(tmp_path.glob("checkpoints"))


def test_missing_data_and_empty_dataset(tmp_path, capsys):
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", f"data={tmp_path / 'nope'}", "--set",
                         "progress=false", "--run-dir", str(tmp_path / "r1")], capsys)
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", f"data={tmp_path / 'empty'}", "--set",
                         "progress=false", "--set", f"data_cache={tmp_path / 'c'}", "--run-dir", str(tmp_path / "r2")],
                        capsys)
    assert_one_line_error(code, err, "no usable")


def test_a_vae_that_does_not_match_the_diffusion_config(vae_run, tmp_path, capsys):
    code, err = run_cli(["diffusion", "--config", "tiny", "--set", "preset=default", "--set",
                         f"vae={vae_run.run_dir}", "--set", "progress=false", "--run-dir", str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "does not match preset 'default'", "image_size=16 (wanted 64)")
    code, err = run_cli(["diffusion", "--config", "tiny", "--set", f"vae={tmp_path / 'missing'}", "--run-dir",
                         str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "does not exist")
    not_ckpt = tmp_path / "weights.safetensors"
    not_ckpt.write_bytes(b"\x00" * 64)
    code, err = run_cli(["diffusion", "--config", "tiny", "--set", f"vae={not_ckpt}", "--run-dir",
                         str(tmp_path / "d")], capsys)
    assert_one_line_error(code, err, "not a safetensors checkpoint")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(vae_run, tmp_path, capsys, monkeypatch):
    calls = {"n": 0}

    def poisoned(*args):
        calls["n"] += 1
        loss, per_frame = _real_loss(*args)
        return (loss * float("nan") if calls["n"] > 5 else loss), per_frame

    monkeypatch.setattr(stages_mod, "diffusion_loss", poisoned)
    run = tmp_path / "d"
    code, err = run_cli(["diffusion", "--config", "tiny", "--set", f"vae={vae_run.run_dir}", "--set",
                         "checkpoint_every=5", "--set", "max_steps=20", "--set", "progress=false",
                         "--run-dir", str(run)], capsys)
    assert_one_line_error(code, err, "loss became nan at step 6", "step-00000005")
    assert latest_checkpoint(run).name == "step-00000005"
    assert load_run(run).step == 5


def test_a_failing_save_keeps_the_previous_checkpoint(vae_run, tmp_path, capsys, monkeypatch):
    real_save = state_mod.save_file
    calls = {"n": 0}

    def flaky(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            real_save(dict(list(tensors.items())[:3]), path, metadata=metadata)  # half a file, then the crash
            raise OSError(28, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(state_mod, "save_file", flaky)
    run = tmp_path / "d"
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", "checkpoint_every=3", "--set", "max_steps=10",
                         "--set", "progress=false", "--run-dir", str(run)], capsys)
    assert_one_line_error(code, err, "could not save the checkpoint of step 6", "No space left", "intact")
    assert latest_checkpoint(run).name == "step-00000003"
    assert load_run(run).step == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.json", "step-00000003"]
    # and the run resumes from it (a temp dir left by a killed writer is cleaned up)
    stale = run / "checkpoints" / ".step-00000009.x1y2.tmp"
    stale.mkdir()
    monkeypatch.setattr(state_mod, "save_file", real_save)
    code, err = run_cli(["vae-image", "--run-dir", str(run), "--resume", "--set", "max_steps=4"], capsys)
    assert code == 0 and load_run(run).step == 4
    assert not stale.exists()


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer.cli", "diffusion", "--set", "bogus=1", "--run-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown config key 'bogus'" in proc.stderr


def test_packaged_configs_parse():
    for name in ("tiny", "default", "default-quick", "wide-quick", "paper"):
        for stage in ("vae-image", "vae-temporal", "diffusion"):
            cfg = load_config(stage, name, ["vae=x"] if stage != "vae-image" else [])
            assert cfg.preset == name.removesuffix("-quick") or name == "tiny"
    paper = load_config("diffusion", "paper", ["vae=x"])
    assert (paper.lr, paper.batch_size, paper.grad_accum) == (2e-4, 16, 8)
    shipped = load_config("diffusion", "wide-quick", ["vae=x"])  # the shipped model's DiT recipe
    assert (shipped.prediction, shipped.context_noise, shipped.latent_norm) == ("x0-delta", 50, "channel")


def test_lr_schedule_and_ema_rule():
    from trainer.ema import EMA
    from trainer.train import lr_at

    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, lr_schedule="cosine", max_steps=110)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55) and lr_at(cfg, 110) == pytest.approx(0.1)  # Python floats
    m = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(m.weight)
    ema = EMA(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    assert float(ema.params["weight"]) == pytest.approx(0.1)  # DiT: d * ema + (1 - d) * param


def test_sigterm_finishes_the_step_saves_and_exits_130(tmp_path):
    import os
    import time

    run = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "vae-image", "--config", "tiny", "--set",
                             "max_steps=1000000", "--set", "checkpoint_every=1000000", "--set", "progress=false",
                             "--run-dir", str(run)], stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.1)
    # a second trainer on the same run dir is refused, naming the running one, and changes nothing
    second = subprocess.run([sys.executable, "-m", "trainer.cli", "vae-image", "--config", "tiny", "--set",
                             "progress=false", "--run-dir", str(run)], capture_output=True, text=True, env=env,
                            timeout=60)
    assert second.returncode == 2 and f"pid {proc.pid}" in second.stderr, second.stderr
    assert second.stderr.strip().count("\n") == 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not (run / "trainer.lock").exists()  # released on the way out
    step = load_run(run).step
    assert step >= 3 and len(metrics.read_text().splitlines()) == step
    assert cli.main(["vae-image", "--run-dir", str(run), "--resume", "--set", f"max_steps={step + 2}",
                     "--set", "progress=false"]) == 0
    assert load_run(run).step == step + 2


def test_latent_cache_trains_like_encoding_on_the_fly(vae_run, tmp_path):
    sets = [f"vae={vae_run.run_dir}", "max_steps=4", "num_items=32", "flip=false"]
    plain = train(cfg_for("diffusion", *sets), tmp_path / "plain")
    cached = train(cfg_for("diffusion", *sets, "latent_cache=true"), tmp_path / "cached")
    assert (tmp_path / "cached" / "latents.safetensors").is_file()
    # the cache encodes other batches than the loop: the latents, and so the losses, differ by float32 reordering
    # through the VAE's encoder and the DiT (tests/tolerance.py)
    (vae_s, vae_k), (dit_s, dit_k) = vae_stages(get_preset("tiny").vae), dit_stages(get_preset("tiny"))
    rel = relative_reorder_tolerance(vae_s + dit_s, max(vae_k, dit_k))
    assert losses(cached) == pytest.approx(losses(plain), rel=rel)


@pytest.mark.parametrize("native", [False, True])
def test_precision_choice_on_both_kinds_of_cpu(native, monkeypatch):
    """The choice read from the CPU's capabilities, on a CPU with and one without native bf16 (whatever this
    machine has): auto follows it, an explicit choice wins, and bf16 on a CPU without it says it is emulated."""
    from engine import device as device_mod
    from engine.device import resolve_device
    from trainer.runtime import precision_note

    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: native)
    cpu = torch.device("cpu")
    use = resolve_device("cpu", "auto")[1] is not None
    assert use == native
    assert precision_note("auto", cpu, use) == (
        "bf16 autocast (auto: this CPU has AMX/AVX512-BF16)" if native else
        "fp32 (auto: this CPU has no AMX/AVX512-BF16; bf16 would be emulated and ~4x slower)")
    assert resolve_device("cpu", "fp32")[1] is None and precision_note("fp32", cpu, False) == "fp32 (asked for)"
    assert resolve_device("cpu", "bf16")[1] is torch.bfloat16
    assert ("emulated" in precision_note("bf16", cpu, True)) == (not native)
    assert precision_note("auto", torch.device("cuda"), True) == "bf16 autocast (auto: CUDA)"


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_is_what_the_run_logs(native, tmp_path, capsys, monkeypatch):
    from engine import device as device_mod

    monkeypatch.setattr(device_mod, "cpu_supports_bf16", lambda: native)
    train(load_config("vae-image", "tiny", ["progress=false", "max_steps=1", "num_items=8", "batch_size=2"]),
          tmp_path / "auto")
    err = capsys.readouterr().err
    assert ("bf16 autocast (auto: this CPU has AMX/AVX512-BF16)" in err) == native
    assert ("fp32 (auto: this CPU has no AMX/AVX512-BF16" in err) == (not native)


def test_bf16_runs_every_stage(vae_run, tmp_path, capsys):
    for stage, extra in (("vae-image", ["disc_start=1"]), ("diffusion", [f"vae={vae_run.run_dir}"])):
        result = train(load_config(stage, "tiny", ["progress=false", "max_steps=2", "precision=bf16", *extra]),
                       tmp_path / f"bf16-{stage}")
        assert all(np.isfinite(losses(result)))
    assert "bf16 autocast (asked for" in capsys.readouterr().err


def test_pca_init_starts_the_vae_as_its_linear_code(tmp_path):
    """pca_init_frames: a local-latent VAE starts as the local PCA of training frames (decodes its own code
    better than a fresh init); a preset without local latents is refused before any step."""
    import dataclasses

    from engine.models import get_preset
    from engine.models.arvae import ARVAE

    torch.manual_seed(0)
    vae = ARVAE(dataclasses.replace(get_preset("tiny").vae, local_latents=True)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    frames = [torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=16, mode="bilinear") * 2 - 1
              for _ in range(32)]
    x = torch.stack(frames)  # [32, 1, 3, 16, 16]
    before = (vae.decode(vae.encode(x)) - x).abs().mean().item()
    messages = []
    init_vae_from_pca(vae, frames, 16, seed=0, info=messages.append)
    after = (vae.decode(vae.encode(x)) - x).abs().mean().item()
    assert after < 0.5 * before and "16 training frames" in messages[0]
    with pytest.raises(ConfigError, match="local latents"):
        train(cfg_for("vae-image", "pca_init_frames=8", "max_steps=2"), tmp_path / "run")


def test_latent_norm_channel_gives_every_latent_channel_unit_std(tmp_path):
    """latent_norm=channel: measured on the data, folded into the VAE (frames decode as before), every channel
    then has unit std; a VAE without local latents is refused before any step."""
    import dataclasses

    from engine.models import get_preset
    from engine.models.arvae import ARVAE

    torch.manual_seed(0)
    vae = ARVAE(dataclasses.replace(get_preset("tiny").vae, local_latents=True)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    # channels of very different spread, as PCA-started latents have
    spread = torch.logspace(-1, 1, vae.cfg.latent_dim)
    vae.region_in.weight.mul_(spread[:, None, None, None])
    vae.to_latent.weight.mul_(spread[:, None])
    data = [torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1 for _ in range(24)]
    x = torch.stack(data)
    before = vae.decode(vae.encode(x))
    cfg = cfg_for("diffusion", "vae=x", "latent_scale_samples=24", "batch_size=8", "latent_norm=channel")
    factors = normalize_latent_channels(vae, data, cfg, torch.device("cpu"))
    z = vae.encode(x).reshape(-1, vae.cfg.latent_dim)
    assert z.std(0).numpy() == pytest.approx(1.0, rel=0.05)  # unit std measured on a 24-item sample, seeded
    assert max(factors) / min(factors) > 10 and float(vae.latent_scale) == 1.0
    assert_reorder_close(vae.decode(vae.encode(x)), before, *vae_stages(vae.cfg))  # folded layers: reordering
    vae_run = train(cfg_for("vae-image", "max_steps=1"), tmp_path / "vae")
    with pytest.raises(ConfigError, match="local latents"):
        train(cfg_for("diffusion", f"vae={vae_run.run_dir}", "latent_norm=channel", "max_steps=1"), tmp_path / "d")


# --------------------------------------------------------------------------- hostile input: one line, nothing lost


def _small_run(run: Path) -> Path:
    train(cfg_for("vae-image", "max_steps=2", "num_items=8", "batch_size=2"), run)
    return run


def test_resume_from_a_truncated_state_is_one_line_and_touches_nothing(tmp_path, capsys):
    run = _small_run(tmp_path / "r")
    state = latest_checkpoint(run) / "state.safetensors"
    before = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*") if p.is_file())
    for size in (1000, 0):  # a cut inside the tensors, then inside the header
        with open(state, "r+b") as f:
            f.truncate(size)
        listing = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*") if p.is_file())
        code, err = run_cli(["vae-image", "--run-dir", str(run), "--resume", "--set", "max_steps=4"], capsys)
        assert_one_line_error(code, err, "cannot read training checkpoint", "step-00000002", "truncated")
        assert sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*") if p.is_file()) == listing
    assert [name for name, _ in listing] == [name for name, _ in before]


def test_package_to_an_existing_folder_or_onto_its_input_is_refused(vae_run, dit_run, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, err = run_cli(["package", "--diffusion", str(dit_run.run_dir), "-o", str(folder)], capsys)
    assert_one_line_error(code, err, "is a folder", "model.safetensors")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"
    packed = tmp_path / "m.safetensors"
    assert cli.main(["package", "--diffusion", str(dit_run.run_dir), "-o", str(packed)]) == 0
    data = packed.read_bytes()
    code, err = run_cli(["package", "--diffusion", str(tmp_path / "." / "m.safetensors"), "-o", str(packed),
                         "--dtype", "bf16"], capsys)
    assert_one_line_error(code, err, "is the input")
    assert packed.read_bytes() == data


def test_an_os_error_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", "progress=false", "--run-dir",
                         str(tmp_path / "file" / "run")], capsys)
    assert_one_line_error(code, err, "file")
    assert (tmp_path / "file").read_text() == "a file, not a folder"


def test_a_rejected_config_leaves_no_run_dir_behind_and_an_existing_one_untouched(tmp_path, capsys):
    for run in (tmp_path / "new", tmp_path / "a" / "b" / "c"):
        code, err = run_cli(["vae-image", "--config", "tiny", "--set", f"data={tmp_path / 'nope'}", "--set",
                             "progress=false", "--run-dir", str(run)], capsys)
        assert_one_line_error(code, err, "does not exist")
        code, err = run_cli(["vae-image", "--config", "tiny", "--set", "batch_size=1000", "--set", "num_items=8",
                             "--set", "progress=false", "--run-dir", str(run)], capsys)
        assert_one_line_error(code, err, "fewer than one global batch")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    mine = tmp_path / "mine"  # a folder the user made: it stays, with what it holds, and no lock is left
    mine.mkdir()
    (mine / "notes.txt").write_text("plans")
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", f"data={tmp_path / 'nope'}", "--set",
                         "progress=false", "--run-dir", str(mine)], capsys)
    assert code == 2 and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_dataset_warnings_are_one_line_each(tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    (root / "loop.mp4").symlink_to("loop.mp4")
    (root / "notes.txt").write_text("not a video")
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", f"data={root}", "--set", "progress=false",
                         "--set", f"data_cache={tmp_path / 'cache'}", "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "no usable")
    lines = err.splitlines()
    warned = [line for line in lines if "skipping" in line]
    assert len(warned) == 2 and all(line.startswith("ardiff-train: warning: skipping") for line in warned), err
    assert not any("warnings.warn" in line or "DatasetWarning" in line for line in lines), err


# --------------------------------------------------------------------------- one run dir, one trainer


def test_a_second_trainer_on_a_run_dir_is_refused_naming_the_owner(tmp_path, capsys):
    import os

    from trainer.lock import RunDirLock, RunDirLockedError

    run = tmp_path / "r"
    with RunDirLock(run) as held:
        owner = json.loads(held.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"]
        with pytest.raises(RunDirLockedError, match=f"pid {os.getpid()}"):
            RunDirLock(run).acquire()
        code, err = run_cli(["vae-image", "--config", "tiny", "--set", "progress=false", "--set", "max_steps=1",
                             "--run-dir", str(run)], capsys)
        assert_one_line_error(code, err, f"pid {os.getpid()}", "one trainer")
        assert sorted(p.name for p in run.iterdir()) == ["trainer.lock"]  # nothing written by the refused one
    assert not run.exists()  # the claim made the folder and nothing ran in it: it goes with the lock


def test_the_lock_is_released_on_return_and_on_exceptions(tmp_path):
    import os

    run = tmp_path / "r"
    result = train(cfg_for("vae-image", "max_steps=1", "num_items=8", "batch_size=2"), run)
    assert result.step == 1 and not (run / "trainer.lock").exists()

    held = []
    for error in (RuntimeError, KeyboardInterrupt):
        def fail(step, record, error=error):
            held.append(json.loads((tmp_path / "r2" / "trainer.lock").read_text())["pid"])  # held while it runs
            raise error("stop")

        with pytest.raises(error):
            train(cfg_for("vae-image", "max_steps=3", "num_items=8", "batch_size=2"), tmp_path / "r2", on_step=fail)
        assert (tmp_path / "r2").is_dir() and not (tmp_path / "r2" / "trainer.lock").exists()
    assert held == [os.getpid()] * 2


def test_a_stale_lock_is_taken_over_with_one_warning(tmp_path, capsys):
    import socket

    from trainer.lock import LOCK_NAME

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no live process now
    run = tmp_path / "r"
    run.mkdir()
    (run / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    code, err = run_cli(["vae-image", "--config", "tiny", "--set", "progress=false", "--set", "max_steps=1",
                         "--set", "num_items=8", "--set", "batch_size=2", "--run-dir", str(run)], capsys)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "stale lock" in line]
    assert len(warned) == 1 and warned[0].startswith("ardiff-train: warning:") and f"pid {dead.pid}" in warned[0]
    assert load_run(run).step == 1 and not (run / LOCK_NAME).exists()


def test_without_flock_the_owners_pid_decides(tmp_path, monkeypatch):
    import os
    import socket

    from trainer import lock as lock_mod

    monkeypatch.setattr(lock_mod, "fcntl", None)  # no POSIX locks (or a file system without them)
    run = tmp_path / "r"
    run.mkdir()
    alive = {"pid": os.getppid(), "host": socket.gethostname(), "start": lock_mod._start_time(os.getppid())}
    (run / lock_mod.LOCK_NAME).write_text(json.dumps(alive))
    with pytest.raises(lock_mod.RunDirLockedError, match=f"pid {os.getppid()}"):
        lock_mod.RunDirLock(run).acquire()
    elsewhere = {**alive, "host": socket.gethostname() + "-other"}  # another machine: cannot be checked, held
    (run / lock_mod.LOCK_NAME).write_text(json.dumps(elsewhere))
    with pytest.raises(lock_mod.RunDirLockedError, match="-other"):
        lock_mod.RunDirLock(run).acquire()
    reused = {**alive, "start": "1"}  # the pid lives, but it is another process than the one that locked
    (run / lock_mod.LOCK_NAME).write_text(json.dumps(reused))
    with pytest.warns(lock_mod.StaleLockWarning, match=f"pid {os.getppid()}"):
        with lock_mod.RunDirLock(run) as held:
            assert json.loads(held.path.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in run.iterdir()) == []


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    def too_big(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(train_mod, "train", too_big)
    code, err = run_cli(["vae-image", "--config", "tiny", "--run-dir", str(tmp_path / "r")], capsys)
    assert_one_line_error(code, err, "out of memory", "batch_size")


def test_interrupt_and_sigterm_outside_the_loop_say_so_in_one_line(tmp_path, capsys, monkeypatch):
    """Ctrl-C or SIGTERM before the loop (which saves on its own) ends in one line that says no checkpoint was
    written for the unfinished step, exit 130 / 143 (128 + the signal), no traceback."""
    import signal

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def terminated(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # the entry point's handler turns it into an exception here

    for fake, want in ((interrupted, 130), (terminated, 143)):
        monkeypatch.setattr(train_mod, "train", fake)
        code, err = run_cli(["vae-image", "--config", "tiny", "--run-dir", str(tmp_path / "r")], capsys)
        assert code == want and "Traceback" not in err, err
        assert err.strip().endswith("no checkpoint written for the unfinished step") and len(err.splitlines()) == 1
