"""FoPP composition sampling and AD row generation speed.

Target (foundation issue): 4096 FoPP compositions for F = 16, T = 1000 in under 20 ms on a 2-core CPU;
AD rows for N = 1024 frames in well under a second.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench.common import header, median_time  # noqa: E402
from engine.schedulers import ADScheduler, make_training_scheduler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    print(header("Schedulers"))
    print("| scheduler | batch | F | T | median ms |")
    print("| --- | --- | --- | --- | --- |")
    g = torch.Generator().manual_seed(0)
    for name in ("fopp", "naive-nondecreasing", "independent", "equal"):
        sched = make_training_scheduler(name, 16, 1000)
        ms = median_time(lambda: sched.sample(4096, generator=g), args.repeats) * 1e3
        print(f"| {name} | 4096 | 16 | 1000 | {ms:.2f} |")
    print()
    print("| AD rows | N | n | s | rows | median s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for s in (0, 1, 5, 10, 50):
        ad = ADScheduler(50, s, 16, 1)
        rows = ad.num_rows(1024)
        sec = median_time(lambda: sum(1 for _ in ad.rows(1024)), 3)
        print(f"| window 16 | 1024 | 50 | {s} | {rows} | {sec:.3f} |")


if __name__ == "__main__":
    main()
