"""The model pair from a config and a set of weights: built on the meta device (no random initialisation to
overwrite, no memory until the weights arrive) and filled from the tensors, each checked against what the
config expects. No file I/O here: engine.checkpoint reads and writes the file."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from engine.errors import CheckpointError
from engine.models import build_models
from engine.models.presets import ModelConfig


def build_meta_models(cfg: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ARVAE, DiT) for a config on the meta device: shapes without memory or initialisation, to count
    parameters or to be filled by `load_state_dict(..., assign=True)`."""
    with _SkipMetaInit(), torch.device("meta"):  # the device context must be the inner mode
        return build_models(cfg)


def models_from_state(cfg: ModelConfig, tensors: dict[str, torch.Tensor], where: str
                      ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ARVAE, DiT) for `cfg` holding `tensors` ("vae." and "dit." prefixed, float), in float32; a config too
    large for this machine, a missing, stray or misshapen tensor is a CheckpointError naming `where`."""
    from engine.limits import check_model

    vae, dit = build_meta_models(cfg)
    check_model(sum(p.numel() for m in (vae, dit) for p in m.parameters()), f"{where}: its config's models")
    for prefix, module in (("vae.", vae), ("dit.", dit)):
        _load_into(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, prefix, where)
        check_materialised(module, prefix)
    stray = sorted(k for k in tensors if not k.startswith(("vae.", "dit.")))
    if stray:
        raise CheckpointError(f"{where} has unexpected tensors: {', '.join(stray[:5])}")
    return vae, dit


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {prefix}{missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        if unexpected:
            parts.append(f"unexpected {prefix}{unexpected[0]}"
                         + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{where} does not match its config: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{where}: {prefix}{name} has shape {tuple(tensor.shape)}, the config expects "
                                  f"{tuple(expected[name].shape)}")
    # assign: the loaded tensors become the parameters (one copy, no random init underneath); float32 as built
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)


class _SkipMetaInit(TorchFunctionMode):
    """Inside `torch.device("meta")`: initialisers on meta tensors do nothing, as there is no data to fill.
    Run, several of them (normal_, trunc_normal_) go through torch's Python reference ops, whose first use
    imports torch._dynamo: seconds of start-up for values that are thrown away. The mode is thread-local."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes its tensor by keyword
        initialiser = (getattr(func, "__module__", None) == "torch.nn.init"
                       or getattr(func, "__name__", "") in _FILLS)
        if initialiser and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


# in-place ops that only fill values (never change a shape): the ones initialisers are made of
_FILLS = {"uniform_", "normal_", "zero_", "fill_", "copy_", "erfinv_", "mul_", "add_", "clamp_",
          "exponential_"}


def check_materialised(module: torch.nn.Module, prefix: str) -> None:
    """Models are built on the meta device and filled from the weights, so a tensor the state dict does not
    hold (a non-persistent buffer, a plain tensor attribute) would stay without data: fail loudly here."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise RuntimeError(f"{prefix}{name} is not in the state dict, so it cannot be filled from weights; "
                               f"make it a persistent buffer or compute it in forward")
    for name, sub in module.named_modules():
        for key, value in vars(sub).items():
            if isinstance(value, torch.Tensor) and value.is_meta:
                raise RuntimeError(f"{prefix}{name}.{key} is a tensor attribute weights cannot fill")
