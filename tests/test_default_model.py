"""The shipped default model: found without arguments, inside the size budget, and actually trained.

The quality floors sit well below what assets/MODEL_CARD.md reports (so they hold on any CPU), but far above
what a broken package gives (a wrong latent scale, weights of another VAE, random weights: all < 12 dB).
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.checkpoint import ASSETS_DIR, DEFAULT_CHECKPOINT_NAME, load_checkpoint
from engine.metrics.image import score_frames
from engine.video_io import fit_frames, read_video

MODEL = ASSETS_DIR / DEFAULT_CHECKPOINT_NAME


@pytest.fixture(scope="module")
def pipe():
    from engine.pipeline import load_pipeline

    return load_pipeline(device="cpu")  # no checkpoint argument: the embedded model


def test_assets_fit_the_budget_and_hold_what_the_card_says():
    total = sum(p.stat().st_size for p in ASSETS_DIR.iterdir() if p.is_file())
    assert total <= 25 * 10**6
    ck = load_checkpoint(MODEL)
    assert ck.config.window == 16 and ck.config.vae.image_size == 64
    assert ck.meta["weights"] == "ema" and {"vae-image", "diffusion"} <= set(ck.meta["steps"])
    card = (ASSETS_DIR / "MODEL_CARD.md").read_text()
    assert f"preset | `{ck.config.name}`" in card, "the model card names another preset"
    assert f"predicts {ck.config.diffusion.prediction}" in card
    for stage, steps in ck.meta["steps"].items():
        assert f"{steps:,}" in card or str(steps) in card, f"the model card does not give the {stage} steps"


def test_embedded_model_is_found_and_reconstructs_the_demo_clip(pipe):
    from engine.evaluation.reconstruction import reconstruct

    assert pipe.checkpoint.path.resolve() == MODEL.resolve()
    real, fake = reconstruct(pipe, read_video(ASSETS_DIR / "demo.mp4"))
    assert score_frames(real, fake)[0].mean() > 20.0


def test_embedded_model_continues_the_demo_clip_plausibly(pipe):
    from engine.pipeline import Done

    clip = fit_frames(read_video(ASSETS_DIR / "demo.mp4", max_frames=10), pipe.resolution)
    done = [e for e in pipe.continue_video(clip[:8], num_new_frames=2, s=5, steps=10, seed=0)
            if isinstance(e, Done)][0]
    new = done.video[8:]
    assert new.shape == (2, 64, 64, 3)
    # Close to the real next frames (a talking head barely moves), and far from noise or a blank frame.
    assert score_frames(clip[8:10], new)[0].mean() > 16.0
    assert np.abs(new.astype(int) - clip[7].astype(int)).mean() < 40
