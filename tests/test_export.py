"""ardiff-export: the exported DiT step and VAE decode step (AOTInductor, ONNX Runtime) match the eager model.

Each backend is exported once per module (an AOTInductor compile of the two tiny graphs takes about a minute
on two cores) and reused. TensorRT cannot run here: its code path is exercised with a stand-in
torch_tensorrt module that returns the exported program itself, so torch.export, the min/opt/max ranges,
saving, loading and validation all run.
"""

import json
import shutil
import sys
import types

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends import export as E
from engine.checkpoint import load_checkpoint, save_checkpoint
from engine.diffusion import DiffusionSchedule
from engine.backends.export_cli import main as export_main
from engine.models.dit import KVCache
from engine.pipeline import Pipeline, load_pipeline
from engine.sampling import make_sampler
from engine.schedulers import ADScheduler
from engine.video_io import read_video
from tests.helpers import randomize_
from tests.tolerance import dit_stages, relative_reorder_tolerance, reorder_tolerance, vae_stages

STEP_TOL = 1e-4  # per-step outputs and final latents, float32 (measured: about 1e-6)


@pytest.fixture(scope="module")
def live_checkpoint(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint with the VAE's temporal path switched on too (random gates), so memory matters, and
    local latents (the `default` preset's attention masks) and a border mixer, so the graphs carry them."""
    import dataclasses

    from engine.models.arvae import ARVAE

    ck = load_checkpoint(tiny_checkpoint)
    config = ck.config.replace(vae=dataclasses.replace(ck.config.vae, local_latents=True, mixer_channels=4))
    vae = ARVAE(config.vae)
    vae.load_state_dict(ck.vae.state_dict(), strict=False)  # + the region paths and the mixer, randomized below
    randomize_(vae, std=0.1, seed=1)
    path = tmp_path_factory.mktemp("export-ckpt") / "tiny-live.safetensors"
    save_checkpoint(path, vae, ck.dit, config)
    return path


@pytest.fixture(scope="module", params=["aoti", "onnx"])
def exported(request, live_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"export-{request.param}") / "graphs"
    manifest = E.export(live_checkpoint, out, request.param, device="cpu", dtype="fp32")
    return request.param, out, manifest


def _cache(dit, B, P, g):
    cache = KVCache(0)
    if P:
        zc = torch.randn(B, P, dit.num_tokens, dit.latent_dim, generator=g)
        _, kv = dit.forward_cached(zc, torch.zeros(B, P, dtype=torch.long), cache)
        cache.append(kv, P, dit.num_tokens)
    return cache


# -- eager: the pure-tensor entry points equal the sampler's ------------------------------------------------


def test_step_equals_forward_cached(live_checkpoint):
    ck = load_checkpoint(live_checkpoint)
    dit = ck.dit
    g = torch.Generator().manual_seed(0)
    grid = torch.arange(0, 1001, 125)
    for B, M, P in [(1, 1, 0), (2, 5, 0), (1, 1, 15), (2, 6, 4), (1, 16, 0)]:
        table = dit.conditioning_table(grid)
        z, t = torch.randn(B, M, 4, 4, generator=g), grid[torch.randint(0, 9, (M,), generator=g)][None].expand(B, M)
        cache = _cache(dit, B, P, g)
        with torch.no_grad():
            want, kv = dit.forward_cached(z, t, cache, table=table)
            mods, final = dit._modulations(t, None, table)
            if P:
                pk = torch.stack([k for k, _ in cache.layers]).unflatten(3, (P, 4))
                pv = torch.stack([v for _, v in cache.layers]).unflatten(3, (P, 4))
            else:
                pk = pv = torch.zeros(2, B, 2, 1, 4, 16)
            x0, nk, nv = dit.step(z, torch.stack(mods), final, pk, pv, torch.tensor([P]))
        stages = dit_stages(ck.config)  # another float32 kernel order (tests/tolerance.py)
        assert (x0 - want).abs().max() <= reorder_tolerance(want, *stages)
        assert all((nk[i] - kv[i][0]).abs().max() <= reorder_tolerance(kv[i][0], *stages) for i in range(2))


def test_decode_step_equals_decode_next(live_checkpoint):
    vae = load_checkpoint(live_checkpoint).vae
    S, C = vae.memory_slots, vae.cfg.width
    state, memory, n = vae.start_decode(), torch.zeros(1, 2, S, 4, 2 * C), 0
    g = torch.Generator().manual_seed(0)
    frames = []
    with torch.no_grad():
        for _ in range(S + 3):  # past the point where the memory is full and starts dropping frames
            lat = torch.randn(2, 4, 4, generator=g)
            want = vae.decode_next(lat, state)
            got, memory = vae.decode_step(lat, memory, torch.tensor([n]))
            n = min(n + 1, S)
            assert (got - want).abs().max() <= reorder_tolerance(want, *vae_stages(vae.cfg))  # tests/tolerance.py
            frames.append(got)
    assert (frames[2] - frames[1]).abs().max() > 1e-3  # the decoder is live


# -- exported graphs -------------------------------------------------------------------------------------------


def test_manifest_records_export(exported, live_checkpoint):
    backend, out, manifest = exported
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["checkpoint"]["sha256"] == E.file_sha256(live_checkpoint)
    assert manifest["preset"] == "tiny" and manifest["backend"] == backend and manifest["dtype"] == "fp32"
    assert manifest["backend_version"]["torch"] == torch.__version__
    dit = manifest["graphs"]["dit_step"]
    assert dit["dims"] == {"batch": [1, 2], "frames": [1, 16], "cache_slots": [1, 15]}
    assert (out / dit["file"]).is_file() and (out / manifest["graphs"]["vae_decode_step"]["file"]).is_file()
    v = manifest["validation"]
    # max_rel_err is relative to each output's scale: ONNX Runtime / AOTInductor kernels are another float32 order
    limit = relative_reorder_tolerance(*dit_stages(load_checkpoint(live_checkpoint).config))
    assert v["passed"] and v["max_rel_err"] <= limit
    shapes = {(c["active_frames"], c["cached_frames"]) for c in v["cases"] if c["graph"] == "dit_step"}
    assert {(1, 0), (16, 0), (1, 15)} <= shapes
    if backend == "onnx":
        assert dit["opset"] >= 17


def test_per_step_outputs_match_eager(exported, live_checkpoint):
    backend, out, _ = exported
    ck = load_checkpoint(live_checkpoint)
    models = E.ExportedModels.load(out, ck, backend)
    dit = ck.dit
    g = torch.Generator().manual_seed(1)
    grid = torch.arange(0, 1001, 125)
    table = models.dit.conditioning_table(grid)
    for B, M, P in [(1, 1, 0), (1, 16, 0), (1, 1, 15), (2, 3, 7), (2, 8, 8), (1, 2, 1)]:
        z = torch.randn(B, M, 4, 4, generator=g)
        t = grid[torch.randint(0, 9, (M,), generator=g)][None].expand(B, M)
        cache = _cache(dit, B, P, g)
        with torch.no_grad():
            want, want_kv = dit.forward_cached(z, t, cache, table=table)
        got, got_kv = models.dit.forward_cached(z, t, cache, table=table)
        assert (got - want).abs().max() < STEP_TOL, (B, M, P)
        for (gk, gv), (wk, wv) in zip(got_kv, want_kv):
            assert (gk - wk).abs().max() < STEP_TOL and (gv - wv).abs().max() < STEP_TOL
    state, ref = models.vae.start_decode(), ck.vae.start_decode()
    for _ in range(models.vae.memory_slots + 2):
        lat = torch.randn(1, 4, 4, generator=g)
        with torch.no_grad():
            want = ck.vae.decode_next(lat, ref)
        assert (models.vae.decode_next(lat, state) - want).abs().max() < STEP_TOL
    assert models.dit.runner.calls == 6 and models.vae.runner.calls == models.vae.memory_slots + 2


def test_sampling_matches_eager(exported, live_checkpoint):
    """The same cached sampler with the exported graphs: every row and the final latents, then the frames."""
    backend, out, _ = exported
    ck = load_checkpoint(live_checkpoint)
    models = E.ExportedModels.load(out, ck, backend)
    g = torch.Generator().manual_seed(2)
    noise, context = torch.randn(1, 22, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    results = []
    for dit in (ck.dit, models.dit):
        sampler = make_sampler("cached", dit, DiffusionSchedule(), ADScheduler(6, 2, 16, 1))
        with torch.no_grad():
            rows = [step.latents.clone() for step in sampler.denoise(context, noise)]
        results.append((sampler.latents, rows, sampler.stats))
    (want, want_rows, stats), (got, got_rows, got_stats) = results
    assert len(got_rows) == len(want_rows) and stats == got_stats
    assert all((a - b).abs().max() < STEP_TOL for a, b in zip(got_rows, want_rows) if a.numel())
    assert (got - want).abs().max() < STEP_TOL
    assert models.dit.runner.calls == stats.network_calls  # every DiT call ran the exported graph

    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    eager = Pipeline(ck, torch.device("cpu"), None)
    fast = load_pipeline(live_checkpoint, device="cpu", backend=backend, export_dir=out)
    assert f"backend {backend}" in fast.describe()
    videos = [list(p.continue_video(frames, num_new_frames=18, s=3, steps=6, seed=0))[-1].video for p in (eager, fast)]
    assert videos[0].shape == videos[1].shape == (21, 16, 16, 3)
    assert np.abs(videos[0].astype(int) - videos[1].astype(int)).max() <= 1  # uint8 rounding at most
    assert fast.exported.vae.runner.calls == 21


def test_cli_continue_with_exported_graphs(exported, live_checkpoint, tmp_path, capsys):
    from engine.cli import main as ardiff_main

    backend, out, _ = exported
    demo = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
    result = tmp_path / "out.gif"
    code = ardiff_main(["continue", str(demo), "-o", str(result), "--context", "3", "--frames", "4", "--steps", "3",
                        "--checkpoint", str(live_checkpoint), "--backend", backend, "--export-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"backend {backend}" in err and read_video(result).shape[0] == 7
    code = ardiff_main(["continue", str(demo), "-o", str(tmp_path / "x.gif"), "--checkpoint", str(live_checkpoint),
                        "--backend", backend, "--export-dir", str(tmp_path / "missing"), "--quiet"])
    assert code == 2


@pytest.mark.parametrize("attack", ["dit_step", "vae_decode_step", "manifest"])
def test_tampered_export_is_refused(exported, live_checkpoint, tmp_path, capsys, attack):
    """Issue 21 item 3: one flipped byte in a graph (or an edited sha256 in the manifest) was sampled with."""
    from engine.cli import main as ardiff_main

    backend, out, manifest = exported
    copy = tmp_path / "graphs"
    shutil.copytree(out, copy)
    if attack == "manifest":
        edited = json.loads((copy / "manifest.json").read_text())
        edited["graphs"]["dit_step"]["sha256"] = "0" * 64
        (copy / "manifest.json").write_text(json.dumps(edited))
    else:
        graph = copy / manifest["graphs"][attack]["file"]
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0x01
        graph.write_bytes(bytes(data))
    with pytest.raises(E.ExportError, match="does not match its manifest"):
        load_pipeline(live_checkpoint, device="cpu", backend=backend, export_dir=copy)
    demo = Path(__file__).resolve().parents[1] / "assets" / "demo.mp4"
    code = ardiff_main(["continue", str(demo), "-o", str(tmp_path / "x.gif"), "--frames", "2", "--steps", "2",
                        "--checkpoint", str(live_checkpoint), "--backend", backend, "--export-dir", str(copy),
                        "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "does not match its manifest" in err and err.count("\n") == 1
    assert not (tmp_path / "x.gif").exists()


def test_only_a_previous_export_is_replaced(exported, tmp_path):
    """Issue 21 item 1: `-o DIR` removed DIR whatever it held. A previous export (a manifest and the graphs it
    names, nothing else) may be replaced; a folder with anything else in it is refused before any work."""
    _, out, _ = exported
    assert E.is_previous_export(out)
    E.check_export_target(out)  # re-exporting over the same folder is fine
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    (mixed / "notes.txt").write_text("mine")
    assert not E.is_previous_export(mixed)
    with pytest.raises(E.ExportError, match="other files"):
        E.check_export_target(mixed)
    assert (mixed / "notes.txt").read_text() == "mine"


def test_out_of_range_shapes_are_refused(exported, live_checkpoint):
    backend, out, _ = exported
    ck = load_checkpoint(live_checkpoint)
    models = E.ExportedModels.load(out, ck, backend)
    table = models.dit.conditioning_table(torch.arange(0, 1001, 125))
    t17 = torch.full((1, 17), 500)
    with pytest.raises(E.ExportShapeError, match=r"frames = 17 .* outside the exported range 1\.\.16"):
        models.dit.forward_cached(torch.randn(1, 17, 4, 4), t17, KVCache(0), table=table)
    cache = _cache(ck.dit, 1, 10, torch.Generator().manual_seed(0))
    with pytest.raises(E.ExportShapeError, match=r"cached frames \(10\) \+ active frames \(7\) exceed"):
        models.dit.forward_cached(torch.randn(1, 7, 4, 4), torch.full((1, 7), 500), cache, table=table)
    with pytest.raises(E.ExportShapeError, match=r"batch = 3 .* outside the exported range 1\.\.2"):
        models.dit.forward_cached(torch.randn(3, 2, 4, 4), torch.full((3, 2), 500), KVCache(0), table=table)
    runner = models.dit.runner
    good = E.make_inputs(runner.spec, {"batch": 1, "frames": 2, "cache_slots": 3}, torch.device("cpu"),
                         torch.Generator().manual_seed(0))
    with pytest.raises(E.ExportShapeError, match="must have size 4 at axis 2"):
        runner(torch.randn(1, 2, 5, 4), *good[1:])
    with pytest.raises(E.ExportShapeError, match="must be float32"):
        runner(good[0].double(), *good[1:])
    with pytest.raises(E.ExportShapeError, match="disagree on frames"):
        runner(torch.randn(1, 3, 4, 4), *good[1:])
    with pytest.raises(E.ExportShapeError, match=r"length 4 must be in 0\.\.3"):
        runner(*good[:5], torch.tensor([4]))
    state = models.vae.start_decode()
    models.vae.decode_next(torch.randn(1, 4, 4), state)
    with pytest.raises(E.ExportShapeError, match="disagree on batch"):
        models.vae.decode_next(torch.randn(2, 4, 4), state)


# -- bad input ---------------------------------------------------------------------------------------------


def test_load_refuses_other_checkpoint_newer_format_and_wrong_backend(exported, live_checkpoint, tiny_checkpoint,
                                                                        tmp_path):
    backend, out, _ = exported
    with pytest.raises(E.ExportError, match="exported from another checkpoint"):
        load_pipeline(tiny_checkpoint, device="cpu", backend=backend, export_dir=out)
    other = "onnx" if backend == "aoti" else "aoti"
    with pytest.raises(E.ExportError, match=f"holds a {backend} export, not {other}"):
        load_pipeline(live_checkpoint, device="cpu", backend=other, export_dir=out)
    with pytest.raises(E.ExportError, match="needs export_dir"):
        load_pipeline(live_checkpoint, device="cpu", backend=backend)
    with pytest.raises(E.ExportError, match="backend must be 'eager', 'compile' or one of"):
        load_pipeline(live_checkpoint, device="cpu", backend="tvm", export_dir=out)
    newer = tmp_path / "newer"
    shutil.copytree(out, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = E.MANIFEST_VERSION + 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(E.ExportError, match="upgrade ardiff"):
        load_pipeline(live_checkpoint, device="cpu", backend=backend, export_dir=newer)
    with pytest.raises(E.ExportError, match="not an ardiff export"):
        load_pipeline(live_checkpoint, device="cpu", backend=backend, export_dir=tmp_path)
    # the exported graphs never stand in for the oracle
    pipe = load_pipeline(live_checkpoint, device="cpu", backend=backend, export_dir=out)
    with pytest.raises(E.ExportError, match="cached sampler only"):
        pipe.generate(num_frames=2, steps=2, sampler="reference")  # at the call, not mid-stream
    with pytest.raises(E.ExportError, match="cached sampler only"):
        pipe.dit(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, dtype=torch.long))


def test_cli_bad_input_exits_2(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert export_main([str(bad), "-o", str(tmp_path / "o"), "--onnx"]) == 2
    assert "not a safetensors checkpoint" in capsys.readouterr().err
    assert export_main([str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--onnx", "--dtype", "bf16"]) == 2
    assert "bfloat16" in capsys.readouterr().err
    assert export_main([str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--aoti", "--max-frames", "17"]) == 2
    assert "--max-frames must be in 2..16" in capsys.readouterr().err
    real_import = E.importlib.import_module

    def no_onnxruntime(name, *a):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *a)

    monkeypatch.setattr(E.importlib, "import_module", no_onnxruntime)
    assert export_main([str(tiny_checkpoint), "-o", str(tmp_path / "o"), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxruntime" in err and "pip install" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_tensorrt_without_cuda_exits_2(tiny_checkpoint, tmp_path, capsys):
    assert export_main([str(tiny_checkpoint), "-o", str(tmp_path / "trt"), "--tensorrt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA" in err and "torch_tensorrt" in err and "pip install" in err
    assert not (tmp_path / "trt").exists()


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in torch_tensorrt: 'compiling' returns the exported program, saving is torch.export.save."""
    calls = {}
    mod = types.ModuleType("torch_tensorrt")
    mod.__version__ = "stand-in"

    class Input:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    def compile(ep, arg_inputs, **kw):
        calls.setdefault("compile", []).append((ep, arg_inputs, kw))
        return ep

    def save(module, path, output_format, arg_inputs, dynamic_shapes):
        calls.setdefault("save", []).append((output_format, dynamic_shapes))
        torch.export.save(module, path)

    mod.Input, mod.save = Input, save
    mod.dynamo = types.SimpleNamespace(compile=compile)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", mod)
    monkeypatch.setattr(E, "require_backend", lambda backend, device: None)  # no CUDA here
    return calls


def test_tensorrt_path_exports_and_checks_the_graphs(fake_tensorrt, live_checkpoint, tmp_path, capsys):
    out = tmp_path / "trt"
    argv = [str(live_checkpoint), "-o", str(out), "--tensorrt", "--device", "cpu", "--dtype", "fp32", "--max-frames", "8"]
    assert export_main(argv) == 0
    assert "validated: max abs err" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    (ep, inputs, kw), _ = fake_tensorrt["compile"]
    assert isinstance(ep, torch.export.ExportedProgram) and kw["use_explicit_typing"]
    z, *_, past_k, _, past_len = inputs
    assert (z.min_shape, z.opt_shape, z.max_shape) == ([1, 1, 4, 4], [2, 2, 4, 4], [2, 8, 4, 4])
    assert past_k.min_shape[3] == 1 and past_k.max_shape[3] == 7 and past_len.dtype == torch.long
    assert all(fmt == "exported_program" for fmt, _ in fake_tensorrt["save"])
    limit = relative_reorder_tolerance(*dit_stages(load_checkpoint(live_checkpoint).config))  # as above
    assert manifest["validation"]["passed"] and manifest["validation"]["max_rel_err"] <= limit
    assert manifest["backend"] == "tensorrt" and manifest["backend_version"]["torch_tensorrt"] == "stand-in"
    assert manifest["graphs"]["dit_step"]["dims"]["frames"] == [1, 8]
    pipe = load_pipeline(live_checkpoint, device="cpu", backend="tensorrt", export_dir=out)
    assert pipe.window == 8 and "limited to 8 frames" in pipe.notes[0]  # announced, not silent
    done = list(pipe.generate(num_frames=10, s=2, steps=3))[-1]
    assert done.video.shape == (10, 16, 16, 3) and pipe.dit.runner.calls == done.stats.network_calls
    with pytest.raises(E.ExportShapeError, match="outside the exported range"):
        pipe.dit.runner(*E.make_inputs(pipe.dit.runner.spec, {"batch": 1, "frames": 9, "cache_slots": 1},
                                       torch.device("cpu"), torch.Generator()))


def test_export_over_tolerance_is_refused(fake_tensorrt, live_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(E.TOLERANCE, "fp32", {"rel": -1.0, "abs": -1.0})  # nothing can pass
    out = tmp_path / "refused"
    assert export_main([str(live_checkpoint), "-o", str(out), "--tensorrt", "--device", "cpu", "--dtype", "fp32"]) == 2
    assert "validation failed" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".refused*"))
