"""A run's record as it trains: the rank-0 console (rich, stderr), metrics.jsonl (one JSON line per logged
step), loss.png (drawn with PIL) and, if asked for and importable, TensorBoard events.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from engine.atomic import atomic_path


class Log:
    """Rank-0 console (rich, stderr) plus metrics.jsonl, loss.png and optional TensorBoard."""

    def __init__(self, run_dir: Path, rank: int, tensorboard: bool) -> None:
        from rich.console import Console

        self.run_dir, self.rank = run_dir, rank
        self.console = Console(stderr=True, highlight=False)
        self.records: list[dict[str, Any]] = []
        self.tb = None
        if tensorboard and rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as err:  # noqa: BLE001 - tensorboard is optional
                self.info(f"tensorboard: not available ({type(err).__name__}: {err}); metrics.jsonl only")

    def info(self, text: str) -> None:
        if self.rank == 0:
            self.console.print(f"[ardiff-train] {text}", markup=False, soft_wrap=True)

    def load_previous(self, upto_step: int) -> None:
        """On resume: keep the metric lines up to the checkpoint's step (later ones are redone)."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("step", 0) <= upto_step:
                    kept.append(rec)
        self.records = kept
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def metrics(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.records.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def plot(self) -> None:
        if self.rank == 0 and self.records:
            plot_loss_curve(self.records, self.run_dir / "loss.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_loss_curve(records: list[dict[str, Any]], path: Path, key: str = "loss") -> None:
    """A log-scale loss curve as PNG, drawn with PIL (no matplotlib)."""
    from PIL import Image, ImageDraw

    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and r[key] > 0
           and math.isfinite(r[key])]
    W, H, m = 720, 400, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([m, 20, W - 20, H - m], outline="black")
    if pts:
        s0, s1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
        ys = [math.log10(v) for _, v in pts]
        lo, hi = min(ys), max(ys)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5

        def xy(s: float, y: float) -> tuple[float, float]:
            return (m + (s - s0) / (s1 - s0) * (W - 20 - m), H - m - (y - lo) / (hi - lo) * (H - m - 20))

        line = [xy(s, y) for (s, _), y in zip(pts, ys)]
        if len(line) > 1:
            d.line(line, fill=(31, 119, 180), width=2)
        else:
            x, y = line[0]
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
        d.text((5, 20), f"{10 ** hi:.3g}", fill="black")
        d.text((5, H - m - 10), f"{10 ** lo:.3g}", fill="black")
        d.text((m, H - m + 5), f"{s0}", fill="black")
        d.text((W - 80, H - m + 5), f"{s1}", fill="black")
    d.text((m, H - 25), f"{key} (log scale) vs optimizer step", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")



class Throughput:
    """Steps per second, clips per second and the mean data wait since the last logged step."""

    def __init__(self, clips_per_step: int) -> None:
        self.clips_per_step = clips_per_step
        self.since, self.steps, self.wait = time.perf_counter(), 0, 0.0

    def step(self, data_wait: float) -> None:
        self.steps += 1
        self.wait += data_wait

    def take(self) -> dict[str, float]:
        """The rates since the last call (keys as metrics.jsonl has them), and start again."""
        now = time.perf_counter()
        sps = self.steps / max(now - self.since, 1e-9)
        rates = {"steps_per_s": sps, "clips_per_s": sps * self.clips_per_step, "data_wait_s": self.wait / self.steps}
        self.since, self.steps, self.wait = now, 0, 0.0
        return rates


def progress_bar(log: Log, stage: str, max_steps: int, step: int, enabled: bool):
    """A rich progress bar (steps, loss, steps/s, ETA) on the log's console; returns (progress, task id)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn(f"{stage}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[sps]:.2f} steps/s  ETA"),
                        TimeRemainingColumn(), console=log.console, disable=not enabled)
    return progress, progress.add_task("train", total=max_steps, completed=step, loss=float("nan"), sps=0.0)
