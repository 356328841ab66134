"""Start-up: how long `import engine.pipeline` takes, and the whole-process wall time of short commands.

Every measurement runs in a fresh process, the commands alternating within each repeat (a slow minute of a
shared host then falls on all of them), medians shown. Two kinds of figure:

- import time: `time.perf_counter()` around the import statement inside the child, so it counts the import
  alone (not the interpreter's start, nor torch's teardown at exit); `import torch` alone is the floor under
  it, and the engine's share is the difference of the paired runs;
- whole-process wall time of `ardiff info` and of a 16-frame `ardiff continue` of the demo clip (what a
  person waits for), and of `python -c "import torch"` for comparison.

    .venv/bin/python bench/startup.py --repeats 7

Target (issue 24): the import of `engine.pipeline` at most 1.0 s.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402

IMPORT_TIMER = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def import_seconds(module: str) -> float:
    """Seconds the import of `module` takes inside a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", IMPORT_TIMER.format(module=module)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def wall_seconds(cmd: list[str]) -> float:
    """Whole-process wall time of `cmd` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--clip", default=str(ROOT / "assets" / "demo.mp4"))
    args = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        runs = itertools.count()  # a new output file for every run

        def out() -> str:
            return str(Path(tmp) / f"out-{next(runs)}.mp4")

        commands = {
            "import engine.pipeline (in-process)": lambda: import_seconds("engine.pipeline"),
            "import torch (in-process)": lambda: import_seconds("torch"),
            'python -c "import torch" (whole process)': lambda: wall_seconds([py, "-c", "import torch"]),
            "ardiff info (whole process)": lambda: wall_seconds([py, "-m", "engine.cli", "info"]),
            "ardiff continue, 16 new frames (whole process)": lambda: wall_seconds(
                [py, "-m", "engine.cli", "continue", args.clip, "-o", out(), "--frames", "16", "--quiet"]),
        }
        for fn in commands.values():  # warm the page cache and Python's caches once
            fn()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, fn in commands.items():
                times[name].append(fn())
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"## bench/startup.py\n\n{date}; {cpu_model()}, {len(os.sched_getaffinity(0))} cores allowed, "
          f"load average {os.getloadavg()[0]:.2f} at the end\n`.venv/bin/python bench/startup.py "
          f"{' '.join(sys.argv[1:])}`\n")
    print("| what | median s | min s | max s |\n| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | {max(values):.3f} |")
    engine_share = [a - b for a, b in zip(times["import engine.pipeline (in-process)"],
                                          times["import torch (in-process)"])]
    print(f"\nThe engine's share of its import (paired differences): median {statistics.median(engine_share):.3f} s")


if __name__ == "__main__":
    main()
