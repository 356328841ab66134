"""engine/models/layers.py's Mlp, PatchEmbed and sin-cos table against the timm layers they replace, and the
start-up they buy: importing the engine imports neither timm nor torchvision."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from engine.models.layers import Mlp, PatchEmbed, approx_gelu, build_sincos2d_pos_embed

_TORCHVISION_STUB_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_stub_library = None


def _timm_layers():
    """timm.layers, also where the only torchvision wheel for this torch is a CUDA build whose import fails
    on a CPU-only torch ("operator torchvision::nms does not exist"): its meta registrations look up two op
    schemas, declared here so the import succeeds (timm's layers use none of torchvision's ops)."""
    global _stub_library
    if importlib.util.find_spec("timm") is None:  # not importing it yet: the workaround must come first
        pytest.skip("timm comes with the test extra: pip install -e '.[test]'")
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _stub_library = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _TORCHVISION_STUB_OPS:
            _stub_library.define(schema)
        import torchvision  # noqa: F401
    import timm.layers

    return timm.layers


def test_mlp_matches_timm_keys_and_output():
    timm_layers = _timm_layers()
    torch.manual_seed(0)
    ours = Mlp(24, hidden_features=96, act_layer=approx_gelu)
    theirs = timm_layers.Mlp(24, hidden_features=96, act_layer=approx_gelu)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # checkpoints load into either
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 24)
    # the same ops in the same order on the same CPU: bit-identical, whatever the kernels
    assert torch.equal(ours(x), theirs(x))
    assert Mlp(8, 16).fc2.out_features == 8  # out_features defaults to in_features, as in timm


def test_patch_embed_matches_timm_keys_and_output():
    timm_layers = _timm_layers()
    torch.manual_seed(0)
    ours, theirs = PatchEmbed(16, 4, 3, 32), timm_layers.PatchEmbed(16, 4, 3, 32)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert (ours.grid_size, ours.num_patches) == (tuple(theirs.grid_size), theirs.num_patches)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(ours(x), theirs(x))
    with pytest.raises(ValueError, match="16x16"):
        ours(torch.randn(1, 3, 8, 16))


@pytest.mark.parametrize("shape,dim", [([4, 4], 32), ([2, 3], 16), ([8, 8], 256)])
def test_sincos_table_matches_timm(shape, dim):
    timm_layers = _timm_layers()
    ours = build_sincos2d_pos_embed(shape, dim)
    assert ours.shape == (shape[0] * shape[1], dim) and ours.dtype == torch.float32
    assert torch.equal(ours, timm_layers.build_sincos2d_pos_embed(shape, dim))


def test_start_up_imports_no_timm_torchvision_video_dynamo_or_sympy(tiny_checkpoint):
    """One fresh interpreter (each costs a torch import): after `import engine.pipeline, engine.cli` no timm,
    torchvision or video library (a pipeline that generates, or whose caller decodes, never needs them);
    after loading a checkpoint and `ardiff info` no torch._dynamo or sympy: models are built on the meta
    device to be filled from the file, and initialisers there must not reach torch's Python reference ops,
    whose first use imports both (seconds of start-up)."""
    code = ("import sys; import engine.pipeline, engine.cli; "
            "top = lambda: {m.split('.')[0] for m in sys.modules} | ({'torch._dynamo'} & set(sys.modules)); "
            "print(sorted(top() & {'timm', 'torchvision', 'av', 'PIL', 'cv2'})); "
            "from engine.checkpoint import load_checkpoint; "
            f"load_checkpoint({str(tiny_checkpoint)!r}); engine.cli.main(['info', '--preset', 'paper']); "
            "print(sorted(top() & {'torch._dynamo', 'sympy', 'timm', 'torchvision'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "[]" and lines[-1] == "[]", out
