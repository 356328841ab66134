"""backend="compile": one-frame DiT calls through AOTInductor graphs give the eager results, for the right model."""

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.backends import compiled
from engine.checkpoint import load_checkpoint
from engine.cli import main
from engine.backends.compiled import CompiledDiT, CompileError
from engine.models import build_models, get_preset
from engine.models.dit import KVCache
from engine.pipeline import Done, load_pipeline
from engine.backends.step_dit import StepDiT
from tests.helpers import randomize_
from tests.tolerance import dit_stages, reorder_tolerance
from tests.test_cli import DEMO
from tests.test_sampling import STEPS, run, tiny_dit

STAGES = dit_stages(get_preset("tiny"))  # inductor's kernels are another float32 order: tests/tolerance.py


def filled_cache(dit, frames: int, batch: int) -> KVCache:
    cache = KVCache()
    if frames:
        z = torch.randn(batch, frames, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            _, kv = dit.forward_cached(z, torch.zeros(batch, frames, dtype=torch.long), cache)
        cache.append(kv, frames, dit.num_tokens)
    return cache


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    # the checkpoint's DiT, so the pipeline test below finds graphs of the same model in the graph cache
    dit = load_checkpoint(tiny_checkpoint).dit.eval()
    return dit, CompiledDiT(dit)


@pytest.mark.parametrize("cached_frames", [0, 5, 15])
def test_one_frame_call_equals_eager(model, cached_frames):
    dit, fast = model
    cache = filled_cache(dit, cached_frames, 2)
    z = torch.randn(2, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(2))
    t = torch.full((2, 1), 700)
    with torch.no_grad():
        want, want_kv = dit.forward_cached(z, t, cache)
        got, got_kv = fast.forward_cached(z, t, cache)
    assert (got - want).abs().max() <= reorder_tolerance(want, *STAGES)
    assert want.abs().max() > 0.1  # a live model, not zeros on both sides
    for (gk, gv), (wk, wv) in zip(got_kv, want_kv):
        assert (gk - wk).abs().max() <= reorder_tolerance(wk, *STAGES)
        assert (gv - wv).abs().max() <= reorder_tolerance(wv, *STAGES)


@pytest.mark.parametrize("s,N,C", [(STEPS, 20, 2), (3, 12, 0)])
def test_cached_sampler_with_compiled_dit_equals_reference(model, monkeypatch, s, N, C):
    dit, fast = model
    graph_calls = []
    runner = fast.runner
    monkeypatch.setattr(fast, "runner", lambda *args: graph_calls.append(1) or runner(*args))
    ref, ref_steps = run("reference", dit, s, N, C)
    got, got_steps = run("cached", fast, s, N, C)
    assert (got.latents - ref.latents).abs().max() <= reorder_tolerance(ref.latents, *STAGES)  # as test_sampling
    assert [st.clean_frames for st in got_steps] == [st.clean_frames for st in ref_steps]
    if s >= STEPS:  # frame by frame: nearly every row is one frame, so nearly every call runs the graph
        assert len(graph_calls) > 0.8 * got.stats.network_calls


def test_graphs_for_two_batch_sizes_are_told_apart(model):
    """Once compiled, calls skip most of dynamo's guards: the graph for each batch size must still be the one
    that runs."""
    dit, fast = model
    cache = {batch: filled_cache(dit, 3, batch) for batch in (1, 2)}
    for batch in (1, 2, 1, 2):
        z = torch.randn(batch, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(batch))
        t = torch.full((batch, 1), 300)
        with torch.no_grad():
            got = fast.forward_cached(z, t, cache[batch])[0]
            want = dit.forward_cached(z, t, cache[batch])[0]
            assert (got - want).abs().max() <= reorder_tolerance(want, *STAGES)


def test_changing_the_thread_count_recompiles_instead_of_failing(model):
    """Inductor's CPU graphs are specialised on the thread count; a caller may change it between calls."""
    dit, fast = model
    cache = filled_cache(dit, 2, 2)
    z = torch.randn(2, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(4))
    t = torch.full((2, 1), 500)
    threads = torch.get_num_threads()
    try:
        for n in (threads, 2 if threads == 1 else 1, threads):
            torch.set_num_threads(n)
            with torch.no_grad():
                got = fast.forward_cached(z, t, cache)[0]
                want = dit.forward_cached(z, t, cache)[0]
                assert (got - want).abs().max() <= reorder_tolerance(want, *STAGES)
    finally:
        torch.set_num_threads(threads)


def test_each_model_gets_its_own_graph(model):
    """The weights are frozen into the graph: a second model of the same shape must not reuse the first's graph, in
    memory or in the graph cache."""
    dit, fast = model
    other = randomize_(build_models(get_preset("tiny"))[1], std=0.15, seed=1).eval()
    z = torch.randn(2, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(3))
    t = torch.full((2, 1), 400)
    with torch.no_grad():
        first = fast.forward_cached(z, t, KVCache())[0]
        second = CompiledDiT(other).forward_cached(z, t, KVCache())[0]
        for got, net in ((first, dit), (second, other)):
            want = net.forward_cached(z, t, KVCache())[0]
            assert (got - want).abs().max() <= reorder_tolerance(want, *STAGES)
    assert (first - second).abs().max() > 1e-2


def test_pipeline_compile_backend_matches_eager(tiny_checkpoint):
    # float32: under bfloat16 the graph's fused kernels round differently from eager's (a few pixel levels)
    eager = load_pipeline(tiny_checkpoint, "cpu", precision="fp32")
    fast = load_pipeline(tiny_checkpoint, "cpu", backend="compile", precision="fp32")
    assert "compile" in fast.describe()
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    videos = []
    for pipe in (eager, fast):
        done = [e for e in pipe.continue_video(frames, num_new_frames=5, s=STEPS, steps=STEPS) if isinstance(e, Done)]
        videos.append(done[0].video.astype(int))
    assert videos[0].shape == videos[1].shape == (8, 16, 16, 3)
    assert np.abs(videos[0] - videos[1]).max() <= 1  # float rounding at most flips a pixel level


def test_compile_failure_is_a_typed_error_and_exit_code_2(monkeypatch, tiny_checkpoint, tmp_path, capsys):
    def no_compiler(*args, **kwargs):  # what AOTInductor raises on a machine without a working C++ compiler
        raise torch._inductor.exc.InvalidCxxCompiler("/nonexistent/g++")

    monkeypatch.setattr(compiled, "aoti_compile_and_package", no_compiler)
    with pytest.raises(CompileError, match="use backend 'eager'"):
        load_pipeline(tiny_checkpoint, "cpu", backend="compile")
    out = tmp_path / "out.mp4"
    code = main(["continue", str(DEMO), "-o", str(out), "--frames", "2", "--checkpoint", str(tiny_checkpoint),
                 "--backend", "compile", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1 and "/nonexistent/g++ is not found" in err


def test_export_dir_is_refused_for_compile(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="export_dir"):
        load_pipeline(tiny_checkpoint, "cpu", backend="compile", export_dir=tmp_path)


def test_repeated_calls_reuse_modulations_but_still_check_labels():
    # The stand-in memoises the conditioning rows per timesteps; a call with other labels than the table was
    # built for must still be refused, and repeated calls must give the first call's result.
    cfg = get_preset("tiny")
    cfg.dit.num_classes = 3
    _, labelled = build_models(cfg)
    randomize_(labelled)
    fast = StepDiT(labelled, lambda *args: labelled.step(*args))
    table = fast.conditioning_table(torch.tensor([0, 500, 1000]), torch.tensor([1]))
    cache = filled_cache(labelled, 3, 1)
    z = torch.randn(1, 1, labelled.num_tokens, labelled.latent_dim, generator=torch.Generator().manual_seed(3))
    t = torch.full((1, 1), 500)
    with torch.no_grad():
        first, _ = fast.forward_cached(z, t, cache, torch.tensor([1]), table)
        again, _ = fast.forward_cached(z, t, cache, torch.tensor([1]), table)
        want, _ = labelled.forward_cached(z, t, cache, torch.tensor([1]))
        assert torch.equal(first, again) and (first - want).abs().max() <= reorder_tolerance(want, *STAGES)
        with pytest.raises(ValueError, match="other class labels"):
            fast.forward_cached(z, t, cache, torch.tensor([2]), table)


def test_window_refresh_runs_the_graph_and_equals_eager(model, monkeypatch):
    """A whole window with nothing cached (the cache rebuilt after the window slid) runs the second graph."""
    dit, fast = model
    graph_calls = []
    runner = fast.runner
    monkeypatch.setattr(fast, "runner", lambda *args: graph_calls.append(args[0].shape[1]) or runner(*args))
    z = torch.randn(2, dit.window, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(5))
    t = torch.randint(0, 1001, (1, dit.window), generator=torch.Generator().manual_seed(6)).expand(2, -1)
    with torch.no_grad():
        got, got_kv = fast.forward_cached(z, t, KVCache())
        want, want_kv = dit.forward_cached(z, t, KVCache())
        fast.forward_cached(z[:, :3], t[:, :3], KVCache())  # fewer frames: eager, no graph of its own
    assert graph_calls == [dit.window]
    assert (got - want).abs().max() <= 1e-5  # float32; fused kernels sum in another order
    for (gk, gv), (wk, wv) in zip(got_kv, want_kv):
        assert (gk - wk).abs().max() <= 1e-5 and (gv - wv).abs().max() <= 1e-5


@pytest.mark.parametrize("S,P,M", [(1, 0, 1), (5, 3, 1), (5, 5, 1), (4, 2, 3), (1, 0, 16)])
def test_step_attending_apart_equals_concatenating(S, P, M):
    """DiT.step(apart=True) (the compiled graphs' attention: scores against the cache and the new keys apart,
    one softmax) equals the concatenating form, padding slots and the block-causal mask included."""
    dit, _ = tiny_dit()
    g = torch.Generator().manual_seed(7)
    depth, heads, head_dim = len(dit.blocks), dit.heads, dit.x_embed.out_features // dit.heads
    z = torch.randn(2, M, dit.num_tokens, dit.latent_dim, generator=g)
    table = dit.conditioning_table(torch.tensor([0, 300, 1000]))
    idx = torch.randint(0, 3, (M,), generator=g)
    block_mods = torch.stack(table.blocks)[:, :, idx].expand(-1, 2, -1, -1, -1)
    final_mod = table.final[:, idx].expand(2, -1, -1, -1)
    past_k, past_v = (torch.randn(depth, 2, heads, S, dit.num_tokens, head_dim, generator=g) for _ in range(2))
    # padding slots hold garbage: masked out, they must not matter
    args = (z, block_mods, final_mod, past_k, past_v, torch.tensor([P]))
    with torch.no_grad():
        want = dit.step(*args)
        got = dit.step(*args, apart=True)
        past_k[:, :, :, :S - P] = 1e3
        past_v[:, :, :, :S - P] = -1e3
        padded = dit.step(*args, apart=True)
    assert want[0].abs().max() > 0.1  # a live model
    for a, b, c in zip(got, want, padded):
        assert (a - b).abs().max() <= 1e-5  # float32: the same sums in another order
        assert (c - b).abs().max() <= 1e-5


def test_float32_linears_compile_to_onednn_and_the_pass_is_restored(model):
    """The float32 graphs call oneDNN's packed linears, not MKL's (engine.backends.compiled.onednn_float32_linears),
    and the weight-packing pass is left as it was."""
    from torch._inductor.fx_passes.mkldnn_fusion import CpuMkldnnDeviceOp

    before = (CpuMkldnnDeviceOp.pack_linear_weight, CpuMkldnnDeviceOp.pack_linear)
    dit, fast = model
    with torch.no_grad():  # float32, the fixture's batch: a graph compiled here or in a test above
        fast.forward_cached(torch.zeros(2, 1, dit.num_tokens, dit.latent_dim), torch.full((2, 1), 700), KVCache())
    sources = [zipfile.ZipFile(package).read(name).decode() for package in compiled.graph_cache_dir().glob("*.pt2")
               for name in zipfile.ZipFile(package).namelist() if name.endswith(".cpp")]
    assert sources and any("_linear_pointwise" in code for code in sources)
    assert not any("_mkl_linear" in code for code in sources)
    assert (CpuMkldnnDeviceOp.pack_linear_weight, CpuMkldnnDeviceOp.pack_linear) == before


def one_frame(dit, fast, batch=2, seed=10):
    """A one-frame call after 4 cached frames through `fast`, and the eager model's result for it."""
    cache = filled_cache(dit, 4, batch)
    z = torch.randn(batch, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(seed))
    t = torch.full((batch, 1), 600)
    with torch.no_grad():
        return fast.forward_cached(z, t, cache)[0], dit.forward_cached(z, t, cache)[0]


def record_keys(monkeypatch) -> list[str]:
    """The graph keys compile_step looks up, in order."""
    keys, graph_key = [], compiled.graph_key
    monkeypatch.setattr(compiled, "graph_key", lambda *args: keys.append(graph_key(*args)) or keys[-1])
    return keys


def compile_from(packages: dict[str, bytes], keys: list[str], monkeypatch) -> list[Path]:
    """Stands in for AOTInductor (seconds per graph): "compiles" by writing the package compiled earlier for the
    key being looked up. Returns the paths it wrote."""
    written = []

    def write(program, path):
        written.append(Path(path))
        Path(path).write_bytes(packages[keys[-1]])

    monkeypatch.setattr(compiled, "_compile", write)
    return written


def test_a_later_run_loads_the_compiled_graph_and_a_damaged_one_is_compiled_again(model, monkeypatch):
    dit, fast = model
    keys = record_keys(monkeypatch)
    first, want = one_frame(dit, fast)  # compiled (here or in a test above) and kept in the graph cache
    assert (first - want).abs().max() <= reorder_tolerance(want, *STAGES)
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "_compile", lambda *args: pytest.fail("compiled although the graph is cached"))
        again, _ = one_frame(dit, CompiledDiT(dit))  # what a new process does: load, not compile
    assert torch.equal(again, first)
    package = compiled.graph_cache_dir() / f"{keys[-1]}.pt2"
    good = package.read_bytes()
    package.write_bytes(good[:1000])  # cut short, as by a full disk
    written = compile_from({keys[-1]: good}, keys, monkeypatch)
    repaired, _ = one_frame(dit, CompiledDiT(dit))
    assert len(written) == 1 and torch.equal(repaired, first) and package.read_bytes() == good


def test_a_cache_that_cannot_be_written_is_skipped(model, monkeypatch, tmp_path):
    dit, _ = model
    keys = record_keys(monkeypatch)
    first, _ = one_frame(dit, CompiledDiT(dit))  # loaded from the session's graph cache, or compiled into it
    packages = {keys[-1]: (compiled.graph_cache_dir() / f"{keys[-1]}.pt2").read_bytes()}
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("ARDIFF_GRAPH_CACHE", str(tmp_path / "a-file" / "graphs"))
    written = compile_from(packages, keys, monkeypatch)
    got, _ = one_frame(dit, CompiledDiT(dit))
    assert torch.equal(got, first)
    assert len(written) == 1 and not written[0].exists()  # compiled into a scratch folder, gone once loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_the_graph_cache_keeps_the_most_recently_used(tmp_path):
    for age, name in enumerate(["newest", "middle", "oldest"]):
        (tmp_path / f"{name}.pt2").write_bytes(b"graph")
        os.utime(tmp_path / f"{name}.pt2", (1e9 - age * 100, 1e9 - age * 100))
    (tmp_path / "notes.txt").write_text("not a graph: never touched")
    compiled._keep_recent(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["middle.pt2", "newest.pt2", "notes.txt"]


@pytest.mark.parametrize("rope_space", [False, True])
@pytest.mark.parametrize("P,M", [(0, 1), (5, 1), (0, 16), (2, 3)])
def test_step_with_rotary_tables_from_the_caller_equals_computing_them(P, M, rope_space):
    """The compiled graphs take the new frames' rotary tables as inputs (`DiT._rotary(M, cache length)`, made
    outside the graph); `DiT.step` must give exactly what it gives computing them from the past_len tensor (as
    the exported graphs do), with the rotary places in the frame too (DiTConfig.rope_space)."""
    dit, _ = tiny_dit()
    dit.rope_space = rope_space
    g = torch.Generator().manual_seed(8)
    depth, heads, head_dim = len(dit.blocks), dit.heads, dit.x_embed.out_features // dit.heads
    S = max(P, 1)
    z = torch.randn(1, M, dit.num_tokens, dit.latent_dim, generator=g)
    table = dit.conditioning_table(torch.tensor([0, 300, 1000]))
    idx = torch.randint(0, 3, (M,), generator=g)
    block_mods, final_mod = torch.stack(table.blocks)[:, :, idx], table.final[:, idx]
    past_k, past_v = (torch.randn(depth, 1, heads, S, dit.num_tokens, head_dim, generator=g) for _ in range(2))
    args = (z, block_mods, final_mod, past_k, past_v, torch.tensor([P]))
    with torch.no_grad():
        want = dit.step(*args, apart=True)
        got = dit.step(*args, apart=True, rotary=dit._rotary(M, P, z.device))
        shifted = dit.step(*args, apart=True, rotary=dit._rotary(M, P + 1, z.device))
    assert want[0].abs().max() > 0.1  # a live model
    for a, b in zip(got, want):
        assert torch.equal(a, b)  # the same operations on the same numbers, in eager
    assert not torch.equal(shifted[1], want[1])  # the tables are used: other positions, other keys


def test_float32_padded_cache_under_bfloat16_gives_the_same_result():
    """The compile backend keeps its padded cache in float32 under bfloat16 autocast (attend_apart computes in
    float32, and float32 holds every bfloat16 value exactly), so the result equals a bfloat16 padded cache."""
    dit, _ = tiny_dit()
    z = torch.randn(1, 1, dit.num_tokens, dit.latent_dim, generator=torch.Generator().manual_seed(9))
    t = torch.full((1, 1), 400)

    def runner(*args):
        return dit.step(*args, apart=True)

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache = filled_cache(dit, 4, 1)  # bfloat16 keys, as the sampler caches them under autocast
        same = StepDiT(dit, runner, past_slots=dit.window - 1)
        wide = StepDiT(dit, runner, past_slots=dit.window - 1, past_dtype=torch.float32)
        want, want_kv = same.forward_cached(z, t, cache)
        got, got_kv = wide.forward_cached(z, t, cache)
        assert wide._past(cache, 1, want, dit.window - 1)[0].dtype == torch.float32
    assert want.abs().max() > 0.1
    assert torch.equal(got, want)
    for (gk, gv), (wk, wv) in zip(got_kv, want_kv):
        assert torch.equal(gk, wk) and torch.equal(gv, wv)
