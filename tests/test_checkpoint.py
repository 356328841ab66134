import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

import engine.checkpoint as ckpt_mod
from engine.checkpoint import load_checkpoint, read_checkpoint_header, save_checkpoint
from engine.errors import CheckpointError, WeightsUnavailableError
from engine.models import build_models, get_preset
from engine.models.weights import check_materialised
from tests.helpers import randomize_


@pytest.fixture
def models():
    cfg = get_preset("tiny")
    vae, dit = build_models(cfg)
    randomize_(dit)
    vae.latent_scale.fill_(2.5)
    return vae, dit, cfg


def test_round_trip_is_exact(tmp_path, models):
    vae, dit, cfg = models
    path = save_checkpoint(tmp_path / "m.safetensors", vae, dit, cfg, meta={"recipe": {"steps": 3}})
    loaded = load_checkpoint(path)
    for a, b in ((vae, loaded.vae), (dit, loaded.dit)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
    assert loaded.config == cfg
    assert loaded.meta["recipe"] == {"steps": 3} and loaded.meta["latent_scale"] == 2.5
    assert not loaded.dit.training
    assert read_checkpoint_header(path)[0] == cfg


def test_half_precision_weights_keep_latent_scale(tmp_path, models):
    vae, dit, cfg = models
    path = save_checkpoint(tmp_path / "m.safetensors", vae, dit, cfg, dtype=torch.bfloat16)
    loaded = load_checkpoint(path)
    assert float(loaded.vae.latent_scale) == 2.5
    w = dit.blocks[0].attn.qkv.weight
    w2 = loaded.dit.blocks[0].attn.qkv.weight
    assert w2.dtype == torch.float32 and torch.equal(w2, w.to(torch.bfloat16).float())
    assert not torch.equal(w2, w)


def test_write_is_atomic(tmp_path, models, monkeypatch):
    vae, dit, cfg = models
    path = save_checkpoint(tmp_path / "m.safetensors", vae, dit, cfg)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, vae, dit, cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"state": Evil()}))
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint.*never unpickles"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.pt")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(tmp_path / "torch.pt")


def test_foreign_and_broken_files(tmp_path, models):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an ardiff checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(tmp_path / "empty.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)
    vae, dit, cfg = models
    path = save_checkpoint(tmp_path / "m.safetensors", vae, dit, cfg)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_mismatched_weights(tmp_path, models):
    vae, dit, cfg = models
    tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors.update({f"dit.{k}": v for k, v in dit.state_dict().items()})
    meta = {"format": "ardiff", "format_version": "1", "config": json.dumps(cfg.to_dict()), "meta": "{}"}
    wrong = dict(tensors)
    wrong["dit.x_embed.weight"] = torch.zeros(7, 7)
    save_file(wrong, str(tmp_path / "shape.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match=r"dit.x_embed.weight has shape \(7, 7\)"):
        load_checkpoint(tmp_path / "shape.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "dit.final.linear.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="missing dit.final.linear.bias"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad_cfg = dict(meta, config=json.dumps({"vae": {"nonsense": 1}}))
    save_file(tensors, str(tmp_path / "cfg.safetensors"), metadata=bad_cfg)
    with pytest.raises(CheckpointError, match="invalid model config.*nonsense"):
        load_checkpoint(tmp_path / "cfg.safetensors")
    newer = dict(meta, format_version="99")
    save_file(tensors, str(tmp_path / "new.safetensors"), metadata=newer)
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path / "new.safetensors")


def test_missing_default_model_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ARDIFF_CHECKPOINT", str(tmp_path / "none.safetensors"))
    with pytest.raises(WeightsUnavailableError, match="--checkpoint"):
        load_checkpoint(None)


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700); the result must be readable like any file
    written under the user's umask, or a shared model or frame folder is unreadable for others."""
    import os

    from engine.atomic import atomic_path

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "d", directory=True) as tmp:
            (tmp / "a").write_bytes(b"y")
        vae, dit = build_models(get_preset("tiny"))
        save_checkpoint(tmp_path / "m.safetensors", vae, dit, get_preset("tiny"))  # safetensors replaces its file
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_loading_builds_no_random_weights_and_leaves_nothing_unfilled(tmp_path, models, monkeypatch):
    vae, dit, cfg = models
    path = save_checkpoint(tmp_path / "m.safetensors", vae, dit, cfg)
    # random initialisation is wasted work when every tensor comes from the file: loading must not draw any
    real_uniform = torch.Tensor.uniform_

    def uniform_(t, *args, **kwargs):
        assert t.is_meta, "load_checkpoint drew random weights into real memory"
        return real_uniform(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "uniform_", uniform_)
    loaded = load_checkpoint(path)
    assert all(not t.is_meta and t.dtype == torch.float32 for t in loaded.dit.state_dict().values())
    assert all(p.requires_grad for p in loaded.dit.parameters())  # parameters, as a built model has
    # a tensor the state dict does not carry cannot be filled from the file: refused, not left without data
    with torch.device("meta"):
        module = torch.nn.Linear(2, 2)
        module.register_buffer("table", torch.zeros(3), persistent=False)
    module.load_state_dict({"weight": torch.ones(2, 2), "bias": torch.ones(2)}, strict=False, assign=True)
    with pytest.raises(RuntimeError, match="dit.table"):
        check_materialised(module, "dit.")
