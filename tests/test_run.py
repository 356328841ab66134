"""engine.run: the run request's one set of defaults and checks, and the plan every surface draws being the
rows the pipeline runs (pipeline, TUI worker, GUI preview, `ardiff schedule`)."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest

from engine.errors import ArdiffError, RunError
from engine.pipeline import Done, Planned, Progress, load_pipeline
from engine.run import DEVICES, PRECISIONS, RunRequest, clock, plan_rows

WINDOW = 16  # the tiny preset's


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return load_pipeline(tiny_checkpoint, device="cpu", precision="fp32")


def test_one_set_of_defaults_everywhere():
    from app_tui.main import build_parser as tui_parser
    from app_tui.settings import Settings as TuiSettings
    from engine.cli import build_parser

    r = RunRequest()
    assert (r.new_frames, r.s, r.steps, r.seed, r.context, r.min_context) == (16, 5, 50, 0, 8, 1)
    assert r.history_guidance is None and r.fps == 8.0 and (r.device, r.precision) == ("auto", "auto")
    cli = build_parser()
    for command in (["continue", "clip.mp4", "-o", "x.mp4"], ["generate", "-o", "x.mp4"]):
        args = cli.parse_args(command)
        assert (args.frames, args.s, args.steps, args.seed, args.min_context) == (16, 5, 50, 0, 1), command
        assert args.history_guidance is None and args.device == "auto" and args.precision == "auto"
    assert cli.parse_args(["generate", "-o", "x.mp4"]).fps == 8.0
    # unset: RunRequest.context, or the whole clip where it is shorter (test_cli: a short clip)
    assert cli.parse_args(["continue", "clip.mp4", "-o", "x.mp4"]).context is None
    tui = TuiSettings()
    assert (tui.frames, tui.s, tui.steps, tui.seed, tui.context) == (16, 5, 50, 0, 8)
    args = tui_parser().parse_args([])  # unset flags leave the remembered settings, first RunRequest's (above)
    assert (args.frames, args.s, args.steps, args.context) == (None, None, None, None)
    gui = pytest.importorskip("app_gui.settings").Settings()  # PySide6 is the gui extra
    assert (gui.new_frames, gui.s, gui.steps, gui.seed, gui.context) == (16, 5, 50, 0, 8)


@pytest.mark.parametrize("field, value, message", [
    ("new_frames", 0, "new frames must be at least 1, got 0"),
    ("s", -1, "s must be at least 0, got -1"),
    ("s", True, "s must be a whole number, got True"),  # bool is an int to Python, not to a person
    ("steps", 2.0, "steps must be a whole number, got 2.0"),
    ("context", 0, "context must be at least 1, got 0"),
    ("history_guidance", -0.5, "history guidance must be a number >= 0, got -0.5"),
    ("history_guidance", math.nan, "history guidance must be a number >= 0, got nan"),
    ("fps", 0.0, "fps must be a number > 0, got 0.0"),
    ("device", "tpu", "device must be auto, cpu or cuda, got 'tpu'"),
    ("precision", "fp16", "precision must be one of auto, fp32, bf16, got 'fp16'"),
    ("backend", "jit", "backend must be one of eager, compile, aoti, onnx, tensorrt, got 'jit'"),
])
def test_one_validation_with_typed_one_line_errors(field, value, message):
    with pytest.raises(RunError) as err:
        RunRequest(**{field: value})
    assert err.value.field == field and str(err.value) == message
    assert isinstance(err.value, ArdiffError) and isinstance(err.value, ValueError)  # the CLIs' exit-2 path


def test_shared_lists_and_clock():
    assert DEVICES == ("auto", "cpu", "cuda") and PRECISIONS == ("auto", "fp32", "bf16")
    RunRequest(device="cuda:1")  # a numbered GPU is a device name
    assert [clock(t) for t in (4.24, 75, 3900)] == ["4.2 s", "1:15", "1h05"]


def test_the_model_checks_run_at_the_call(pipe):
    with pytest.raises(RunError, match=r"context must be 1..15 frames") as err:
        pipe.plan(RunRequest(context=16), np.zeros((16, 8, 8, 3), np.uint8))
    assert err.value.field == "context"
    with pytest.raises(RunError, match="only 3 frame"):
        pipe.plan(RunRequest(context=4), np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(RunError, match="steps must be <= 1000"):
        pipe.run(RunRequest(steps=1001))  # before the first event: run() raises, it does not yield


# s, new frames, context (0: from nothing), steps: s = 0 (synchronous), s between, s >= steps (one by one);
# runs that fit the window and runs that slide it, with no context, a little, and the most the model takes.
GRID = [(s, new, ctx, steps) for s, new, ctx, steps in itertools.product((0, 2, 6), (1, 7, 22), (0, 4, 15), (1, 5))
        if not (new == 22 and steps == 1 and s == 2)]  # an equivalent of (0, 22, *, 1): keeps the test short
# synchronous chunks past two windows: where min context 1 (not 0) decides the chunks even from nothing
GRID += [(0, 40, 0, 5), (0, 40, 4, 1)]


def _cli_schedule_levels(capsys, request: RunRequest, num_context: int) -> np.ndarray:
    from engine.cli import main

    argv = ["schedule", "--frames", request.new_frames, "--steps", request.steps, "--s", request.s,
            "--context", num_context, "--window", WINDOW, "--text"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    return np.array([[int(v) for v in line.split()[1:]] for line in out.splitlines()
                     if line.split() and line.split()[0].isdigit()])


@pytest.mark.parametrize("s, new, ctx, steps", GRID)
def test_the_plan_every_surface_draws_is_the_rows_the_pipeline_runs(pipe, capsys, s, new, ctx, steps):
    from app_tui.settings import Settings
    from app_tui.worker import Job, Started, run_job

    request = RunRequest(new_frames=new, s=s, steps=steps, seed=3, context=max(ctx, 1))
    clip = np.random.default_rng(ctx).integers(0, 256, (ctx + 2, 20, 24, 3), dtype=np.uint8) if ctx else None
    events = list(pipe.run(request, clip))
    assert isinstance(events[0], Planned) and sum(isinstance(e, Planned) for e in events) == 1
    plan, done = events[0].plan, events[-1]
    rows = [e for e in events if isinstance(e, Progress)]
    assert isinstance(done, Done) and not done.cancelled and plan.num_context == ctx == done.num_context
    # the plan is the run: every row's levels, the row count, the work
    assert plan.total_rows == len(rows) == rows[-1].total_rows == done.stats.rows
    assert np.array_equal(plan.levels[1:], np.stack([r.levels for r in rows]))
    assert (plan.levels[0][ctx:] == steps).all() and (plan.levels[0][:ctx] == 0).all()
    assert int(plan.frame_evaluations.sum()) == done.stats.frame_forwards
    if ctx:
        assert np.array_equal(plan.context, done.video[:ctx])  # the frames it planned with are the ones shown

    # the TUI draws the Started event's schedule (cancelled at once: only the plan is wanted here)
    class Cache:
        def get(self, checkpoint, device, precision="auto"):
            return pipe

    settings = Settings(s=s, frames=new, steps=steps, seed=3, context=max(ctx, 1), device="cpu", precision="fp32")
    job = Job(settings, clip, cancel=threading.Event())
    started = []

    def emit(event):
        if isinstance(event, Started):
            started.append(event)
            job.cancel.set()

    run_job(job, Cache(), emit)
    assert len(started) == 1 and np.array_equal(started[0].plan.levels, plan.levels)

    # `ardiff schedule` and the GUI's preview (before a model is loaded) plan the same rows
    assert np.array_equal(_cli_schedule_levels(capsys, request, ctx), plan.levels)
    heatmap = pytest.importorskip("app_gui.heatmap")
    assert np.array_equal(heatmap.schedule_levels(new, ctx, steps, s, WINDOW), plan.levels)


@pytest.mark.parametrize("sampler, history", [("reference", None), ("cached", 2.0)])
def test_the_plans_work_is_what_the_sampler_computes(pipe, sampler, history):
    """The ETA weighs rows by their work; it must be the sampler's own count, guidance calls included."""
    frames = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    request = RunRequest(new_frames=20, s=2, steps=3, context=4, sampler=sampler, history_guidance=history)
    events = list(pipe.run(request, frames))
    plan, done = events[0].plan, events[-1]
    assert int(plan.frame_evaluations.sum()) == done.stats.frame_forwards
    assert plan.history_guidance == (pipe.history_guidance if history is None else history)
    assert plan.seconds_left(0, 0.0) is None
    half = plan.total_rows // 2
    expected = 10.0 * plan.frame_evaluations[half:].sum() / plan.frame_evaluations[:half].sum()
    assert plan.seconds_left(half, 10.0) == pytest.approx(expected)


def test_frame_rates_read_as_people_write_them():
    """A container's 14.9999 is 15 fps, NTSC keeps its two decimals, a whole rate has none (the apps and the
    CLI print them through this one function)."""
    from engine.run import frame_rate

    assert frame_rate(14.9999) == "15 fps"
    assert frame_rate(30000 / 1001) == "29.97 fps"
    assert frame_rate(25.0) == "25 fps" and frame_rate(7.5) == "7.5 fps"


def test_a_long_plan_is_cheap_and_agrees_with_the_full_matrix(pipe, monkeypatch):
    """A plan keeps its levels compactly: 100,000 frames plan from a few hundred scheduler rows in a few MB
    (the whole matrix would be 500,046 x 100,008 int64, 400 GB, and was refused past ~22,000 frames), and every
    row read from it is the scheduler's own, where the full matrix can be built to compare."""
    import tracemalloc

    from engine.run import plan_rows, scheduler_for
    from engine.schedulers.ad import ADScheduler

    rng = np.random.default_rng(0)
    for s, new, ctx, steps, min_context in [(5, 200, 8, 50, 1), (0, 97, 0, 7, 1), (1, 60, 3, 4, 0),
                                            (50, 40, 1, 50, 1), (3, 5, 2, 4, 1), (2, 33, 15, 20, 3)]:
        request = RunRequest(new_frames=new, s=s, steps=steps, min_context=min_context)
        levels, _ = plan_rows(request, WINDOW, ctx)
        full = scheduler_for(request, WINDOW, ctx).level_matrix(new, ctx)
        assert levels.shape == full.shape and np.array_equal(np.asarray(levels), full), (s, new, ctx, steps)
        picked = rng.integers(0, len(full), 9)
        assert np.array_equal(levels[picked], full[picked]) and np.array_equal(levels[-1], full[-1])
        assert np.array_equal(levels[2:9:3, ctx:], full[2:9:3, ctx:]) and np.array_equal(levels[1, 3], full[1, 3])
        if new >= 97:  # a run several windows long repeats one block of rows: stored once
            assert levels.nbytes < full.nbytes / 10

    made = []
    rows = ADScheduler.rows

    def counted(self, num_frames, num_context=0):
        for row in rows(self, num_frames, num_context):
            made.append(row.first)
            yield row

    monkeypatch.setattr(ADScheduler, "rows", counted)
    clip = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        plan = pipe.plan(RunRequest(new_frames=100_000), clip)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # per row 8 bytes of work (500,046 rows: 4 MB) and a few hundred stored rows; the bound leaves 2x room
    assert peak < 8 * 2**20, peak
    assert len(made) < 1000, len(made)  # the scheduler ran a few windows' rows, not 500,046
    assert plan.levels.shape == (plan.total_rows + 1, 100_008) and len(plan.frame_evaluations) == plan.total_rows
    # its start, its end and its middle are those of a run short enough to build whole
    monkeypatch.setattr(ADScheduler, "rows", rows)
    short = RunRequest(new_frames=300)
    small = scheduler_for(short, WINDOW, 8).level_matrix(300, 8)
    small_work = plan_rows(short, WINDOW, 8)[1]
    assert len(plan.levels) - len(small) == 5 * (100_000 - 300)  # s = 5: one row more per frame, five levels
    assert np.array_equal(plan.level_matrix(slice(0, 120))[:, :300], small[:120, :300])
    assert np.array_equal(plan.levels[-120:, -300:], small[-120:, -300:])
    middle = plan.total_rows // 2
    shift = (middle - 150) // 5  # the same state 5 rows later is one frame further on
    assert np.array_equal(plan.levels[middle, shift:shift + 300], small[middle - 5 * shift, :300])
    assert np.array_equal(plan.frame_evaluations[-100:], small_work[-100:])
    assert int(plan.frame_evaluations.sum()) > 0


class _RecordingScheduler:
    """The scheduler a run is given, recording the rows the sampler takes from it (and nothing else)."""

    def __init__(self, scheduler):
        self.inner, self.taken = scheduler, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def rows(self, num_frames, num_context=0):
        for row in self.inner.rows(num_frames, num_context):
            self.taken.append(row)
            yield row


class _Network:
    """Stands in for the DiT: zeros out and no keys/values to keep. The network's numbers decide neither the
    rows nor the work; the sampler's own row logic and its counts run unchanged, thousands of rows a second."""

    num_classes, null_class = 0, 0

    def __init__(self, window: int, num_tokens: int):
        self.window, self.num_tokens = window, num_tokens

    def __call__(self, z, t, labels=None):
        import torch

        return torch.zeros_like(z)

    def conditioning_table(self, timesteps, labels):
        return None

    def forward_cached(self, z, t, cache, labels=None, table=None):
        import torch

        return torch.zeros_like(z), []


@pytest.mark.parametrize("sampler", ["cached", "reference"])
@pytest.mark.parametrize("s", [0, 1, 3, 5, 50])
def test_the_plan_is_the_samplers_rows_over_a_grid(pipe, sampler, s):
    """Issue 23, item 8: for s, new frames (1, window - 1, window, 2 window + 3), context (0: from nothing, 1, 3,
    8) and steps (1, 4, 50), the plan a surface draws (Pipeline.plan) is the level matrix of the rows the
    sampler actually takes from the scheduler it is given, and its work is the sampler's frame_forwards."""
    import torch

    from engine.run import scheduler_for
    from engine.sampling import make_sampler

    L, D = pipe.config.vae.num_latent_tokens, pipe.config.vae.latent_dim
    network = _Network(pipe.window, pipe.dit.num_tokens)
    for new, ctx, steps in itertools.product((1, WINDOW - 1, WINDOW, 2 * WINDOW + 3), (0, 1, 3, 8), (1, 4, 50)):
        request = RunRequest(new_frames=new, s=s, steps=steps, context=max(ctx, 1), sampler=sampler)
        clip = np.random.default_rng(ctx).integers(0, 256, (ctx, 12, 12, 3), dtype=np.uint8) if ctx else None
        plan = pipe.plan(request, clip)
        scheduler = _RecordingScheduler(scheduler_for(request, pipe.window, plan.num_context))
        run = make_sampler(sampler, network, pipe.schedule, scheduler, prediction=pipe.config.diffusion.prediction,
                           history_guidance=plan.history_guidance)
        with torch.no_grad():
            steps_done = sum(1 for _ in run.denoise(torch.zeros(1, ctx, L, D), torch.zeros(1, new, L, D)))
        rows = scheduler.taken
        ran = np.stack([rows[0].level_from] + [row.level_to for row in rows])
        where = (sampler, s, new, ctx, steps)
        assert steps_done == len(rows) == plan.total_rows == run.stats.rows, where
        assert plan.levels.shape == ran.shape and np.array_equal(np.asarray(plan.levels), ran), where
        assert np.array_equal(plan.level_matrix(slice(len(ran) // 2, None)), ran[len(ran) // 2:]), where
        assert int(plan.frame_evaluations.sum()) == run.stats.frame_forwards, where


def test_the_readmes_table_of_defaults_is_run_requests():
    """The README's "Same everywhere" table shows RunRequest's values (a changed default changes the docs)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cells = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()
             if line.startswith("| ") and line.count("|") == 4}
    r = RunRequest()
    assert cells["new frames"] == str(r.new_frames) and cells["s (continuing and from nothing)"] == str(r.s)
    assert cells["steps"] == str(r.steps) and cells["seed"] == str(r.seed)
    assert cells["min context"] == str(r.min_context) and cells["context"].startswith(f"{r.context} frames")
    assert cells["frame rate from nothing"].startswith(f"{r.fps:g} fps")
    assert cells["device, precision"] == f"{r.device}, {r.precision}"


@pytest.mark.parametrize("s,frames,context", [(0, 40, 3), (5, 200, 8), (50, 30, 1), (1, 600, 0)])
def test_clean_counts_are_the_full_matrix_s_without_building_it(s, frames, context):
    """The ETA's decodes per row (engine.eta) come from LevelMatrix.clean_counts: equal to counting the clean
    frames of every row of the full matrix, long runs (a repeating block) included."""
    from engine.eta import decodes_per_row

    request = RunRequest(new_frames=frames, s=s, steps=8, context=max(context, 1))
    levels, _ = plan_rows(request, 16, context)
    full = np.asarray(levels)
    assert np.array_equal(levels.clean_counts(), (full == 0).sum(axis=1))
    new = full[:, context:]
    assert np.array_equal(decodes_per_row(levels, context), ((new[:-1] > 0) & (new[1:] == 0)).sum(axis=1))
