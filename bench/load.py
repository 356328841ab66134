"""A continuation on a busy machine: idle, and beside one and two busy-loop processes this script starts.

Two paths, each run in a fresh process (the thread policy decides once per process, as a person's run would):

- `cli`: `ardiff continue CLIP -o OUT --frames F --s S ...` as a subprocess; wall time (start-up, model load,
  sampling, writing) and the sampling time the CLI prints;
- `gui`: the GUI's own worker objects without a window (QT_QPA_PLATFORM=offscreen): threads configured as
  `ardiff-gui` does (one core kept for the window), the model loaded by `app_gui.loaders.load_model`, the
  clip by `read_clip`, and an `app_gui.worker.Generation` run to its `Done` while a Qt event loop turns;
  wall time of the child process and the generation time (Generate pressed to the last frame).

Modes, compared in the same run: `policy` (engine.threads decides), `shipped` (`--threads` = every core, what
shipped before the policy: torch's default), `shipped-passive` (the same with OMP_WAIT_POLICY=PASSIVE),
`shipped-spin` (the same with GOMP_SPINCOUNT=1000: libgomp's threads spin briefly, then sleep). `--backend`
picks the CLI path's sampling backend (`compile`: many small parallel regions per row, where the wait policy
matters most).
Runs alternate between modes within each load level. The busy loops are plain processes spinning in Python
until a deadline (--max-load-s), stopped by this script when the level ends or anything fails.

    .venv/bin/python bench/load.py --repeats 5
    .venv/bin/python bench/load.py --repeats 1 --frames 8 --steps 10 --loads 0,1   (smoke test)

Targets (issue 24): with one busy process, loaded/idle at most 1.5x; idle no slower than `shipped` (5%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402

MODES = ("policy", "shipped", "shipped-passive", "shipped-spin")
PATHS = ("cli", "gui")


@dataclass
class Run:
    """One timed continuation: wall seconds of the whole child process, and of its sampling alone."""

    path: str
    mode: str
    load: int
    wall: float
    sampling: float
    threads: str = ""  # what the child reported about its threads


@dataclass
class Results:
    runs: list[Run] = field(default_factory=list)

    def median(self, path: str, mode: str, load: int, what: str) -> float | None:
        values = [getattr(r, what) for r in self.runs if (r.path, r.mode, r.load) == (path, mode, load)]
        return statistics.median(values) if values else None


# -- load ---------------------------------------------------------------------------------------------------


def _spin(deadline: float) -> None:
    """A busy process: a tight Python loop until the deadline (monotonic seconds), then exit."""
    x = 0
    while time.monotonic() < deadline:
        x += 1


class BusyLoops:
    """`count` busy-loop processes for at most `max_s` seconds; stopped on exit, whatever happened."""

    def __init__(self, count: int, max_s: float) -> None:
        self.count, self.max_s = count, max_s
        self.procs: list[mp.Process] = []

    def __enter__(self) -> BusyLoops:
        deadline = time.monotonic() + self.max_s
        ctx = mp.get_context("spawn")  # a clean interpreter: nothing of this one's state comes along
        for _ in range(self.count):
            p = ctx.Process(target=_spin, args=(deadline,), daemon=True)
            p.start()
            self.procs.append(p)
        if self.procs:
            time.sleep(1.0)  # let them reach their loop, so the run starts on a machine already busy
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


# -- the two paths -------------------------------------------------------------------------------------------


def child_env(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "ARDIFF_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                        "MKL_NUM_THREADS")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    if mode == "shipped-passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif mode == "shipped-spin":
        env["GOMP_SPINCOUNT"] = "1000"
    return env


def mode_threads(mode: str) -> list[str]:
    return [] if mode == "policy" else ["--threads", str(len(os.sched_getaffinity(0)))]


def run_child(cmd: list[str], args: argparse.Namespace, mode: str, what: str
              ) -> tuple[subprocess.CompletedProcess, float]:
    """Run one timed continuation process (with the checkpoint, if given); its result and wall seconds."""
    if args.checkpoint:
        cmd = [*cmd, "--checkpoint", str(args.checkpoint)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(mode), cwd=ROOT,
                          timeout=args.run_timeout_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc, wall


def run_cli(args: argparse.Namespace, mode: str, load: int, out_dir: Path) -> Run:
    cmd = [sys.executable, "-m", "engine.cli", "continue", str(args.clip), "-o", str(out_dir / "out.mp4"),
           "--frames", str(args.frames), "--s", str(args.s), "--steps", str(args.steps), "--context",
           str(args.context), "--device", "cpu", "--precision", args.precision, "--backend", args.backend,
           *mode_threads(mode)]
    proc, wall = run_child(cmd, args, mode, "ardiff continue")
    sampling = re.search(r"; ([0-9.]+) s(,|$)", proc.stderr, re.M)
    threads = re.search(r"backend \w+[^\n]*?, (\d+ threads? \([^)]*\))", proc.stderr)
    return Run("cli", mode, load, wall, float(sampling.group(1)) if sampling else float("nan"),
               threads.group(1) if threads else "")


def run_gui(args: argparse.Namespace, mode: str, load: int, out_dir: Path) -> Run:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--gui-child", "--clip", str(args.clip), "--frames",
           str(args.frames), "--s", str(args.s), "--steps", str(args.steps), "--context", str(args.context),
           "--precision", args.precision, *mode_threads(mode)]
    proc, wall = run_child(cmd, args, mode, "GUI worker run")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return Run("gui", mode, load, wall, report["generation_s"], report["threads"])


def gui_child(args: argparse.Namespace) -> int:
    """In the child: what ardiff-gui does from start to a finished Generate, without a window."""
    from engine.threads import configure_threads

    configure_threads(args.threads, reserve=1)  # as app_gui.main: the flag, else ARDIFF_THREADS, else policy
    from PySide6.QtCore import QCoreApplication, QEventLoop

    app = QCoreApplication.instance() or QCoreApplication(sys.argv[:1])
    from app_gui.loaders import load_model, read_clip
    from app_gui.worker import Generation, Job
    from engine.threads import current_choice

    pipe = load_model(args.checkpoint or "", "cpu", precision=args.precision)  # applies the policy first
    from engine.pipeline import Done
    from engine.run import RunRequest
    frames, _, _ = read_clip(str(args.clip))
    done: list[Done] = []
    failed: list[str] = []
    request = RunRequest(new_frames=args.frames, s=args.s, steps=args.steps, seed=0, context=args.context,
                         precision=args.precision)
    job = Job(request, frames, str(args.clip))
    start = time.perf_counter()
    gen = Generation(pipe, job)
    gen.event.connect(lambda e: done.append(e) if isinstance(e, Done) else None)
    gen.failed.connect(failed.append)
    gen.start()
    while not done and not failed:
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.002)
    elapsed = time.perf_counter() - start
    gen.wait(10)
    if failed:
        print(failed[0], file=sys.stderr)
        return 1
    print(json.dumps({"generation_s": elapsed, "threads": current_choice().describe()}))
    return 0


# -- the run -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default=str(ROOT / "assets" / "demo.mp4"))
    p.add_argument("--checkpoint", default=None, help="default: the embedded model")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--s", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--context", type=int, default=8)
    p.add_argument("--precision", default="auto")
    p.add_argument("--backend", default="eager", help="the CLI path's sampling backend (eager, compile)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loads", default="0,1,2", help="busy-loop processes per level, e.g. 0,1,2")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--max-load-s", type=float, default=1800.0, help="a busy loop ends by itself after this")
    p.add_argument("--run-timeout-s", type=float, default=900.0)
    p.add_argument("--json", help="also write every run here")
    p.add_argument("--gui-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gui_child:
        return gui_child(args)
    loads = [int(v) for v in args.loads.split(",")]
    paths = [v for v in args.paths.split(",") if v]
    modes = [v for v in args.modes.split(",") if v]
    unknown = sorted(set(paths) - set(PATHS)) + sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown path or mode: {', '.join(unknown)}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## bench/load.py\n\n{date}; {cpu_model()}, {len(os.sched_getaffinity(0))} cores allowed, "
          f"load average {os.getloadavg()[0]:.2f} at start\n`{' '.join(['.venv/bin/python'] + sys.argv)}`\n")
    runners = {"cli": run_cli, "gui": run_gui}
    results = Results()
    with tempfile.TemporaryDirectory(prefix="ardiff-load-") as tmp:
        for load in loads:
            with BusyLoops(load, args.max_load_s):
                for rep in range(args.repeats):
                    for path in paths:
                        for mode in modes:
                            run = runners[path](args, mode, load, Path(tmp))
                            results.runs.append(run)
                            print(f"  load {load} {path:>3} {mode:<15} rep {rep + 1}: "
                                  f"wall {run.wall:6.2f} s, "
                                  f"sampling {run.sampling:6.2f} s  [{run.threads}]", flush=True)
    print()
    print("| path | mode | busy procs | wall s (median) | sampling s (median) | wall loaded/idle | "
          "sampling loaded/idle |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        for mode in modes:
            idle_wall, idle_s = (results.median(path, mode, loads[0], w) for w in ("wall", "sampling"))
            for load in loads:
                wall, sampling = (results.median(path, mode, load, w) for w in ("wall", "sampling"))
                ratio = (f"{wall / idle_wall:.2f}x | {sampling / idle_s:.2f}x" if load != loads[0]
                         else "- | -")
                print(f"| {path} | {mode} | {load} | {wall:.2f} | {sampling:.2f} | {ratio} |")
    if "policy" in modes and "shipped" in modes and 0 in loads:
        for path in paths:
            pol = results.median(path, "policy", 0, "sampling")
            old = results.median(path, "shipped", 0, "sampling")
            print(f"\n{path}: idle sampling, policy / shipped = {pol / old:.2f}x (target <= 1.05x)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in results.runs], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
