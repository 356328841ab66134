"""The horizon plot: PSNR per new frame for every s, the baseline and the AR-VAE reference (PIL only)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from engine.evaluation.continuation import AUTOENCODER_NAME, EvalResult


def _nice_step(span: float, target: int) -> float:
    raw = max(span, 1e-9) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def plot_horizon(result: EvalResult, path: str | os.PathLike, width: int = 760, height: int = 460) -> Path:
    """horizon.png: mean PSNR (over clips) vs horizon, one line per s plus the baseline (dashed grey) and the
    AR-VAE reference (dashed green), with axes, ticks, labels and a legend. Infinite values (identical frames)
    are drawn on the top edge."""
    from PIL import Image, ImageDraw, ImageFont

    from engine.atomic import atomic_path
    from engine.visualize import colormap

    font = ImageFont.load_default()
    left, right, top, bottom = 62, 170, 34, 50
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    series = [(r, r.psnr_per_horizon) for r in result.runs]
    finite = np.concatenate([v[np.isfinite(v)] for _, v in series])
    any_inf = any(np.isinf(v).any() for _, v in series)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = 0.0, 50.0
    if hi - lo < 1.0:
        lo, hi = lo - 0.5, hi + 0.5
    ystep = _nice_step(hi - lo, 6)
    ylo, yhi = math.floor(lo / ystep) * ystep, math.ceil(hi / ystep) * ystep
    if any_inf:
        yhi += ystep  # room on top for the identical frames
    n = result.frames
    xlo, xhi = 1, max(n, 2)

    def px(h: float) -> float:
        return x0 + (h - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: float) -> float:
        v = yhi if not math.isfinite(v) else v
        return y1 - (v - ylo) / (yhi - ylo) * (y1 - y0)

    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    # grid, ticks and labels
    v = ylo
    while v <= yhi + 1e-9:
        y = py(v)
        d.line([(x0, y), (x1, y)], fill=(232, 232, 232))
        d.line([(x0 - 5, y), (x0, y)], fill="black")
        label = "inf" if any_inf and v > yhi - ystep / 2 else f"{v:g}"
        d.text((x0 - 8 - d.textlength(label, font=font), y - 6), label, fill="black", font=font)
        v += ystep
    xstep = max(1, int(_nice_step(xhi - xlo, 10)))
    ticks = sorted({1, *range(xstep, n + 1, xstep), n}) if n > 1 else [1]
    for h in ticks:
        x = px(h)
        d.line([(x, y1), (x, y1 + 5)], fill="black")
        label = str(h)
        d.text((x - d.textlength(label, font=font) / 2, y1 + 8), label, fill="black", font=font)
    d.rectangle([x0, y0, x1, y1], outline="black")
    xlabel = f"horizon: new frame h after {result.context} context frames"
    d.text(((x0 + x1) / 2 - d.textlength(xlabel, font=font) / 2, y1 + 26), xlabel, fill="black", font=font)
    d.text((6, y0 - 22), "PSNR (dB)", fill="black", font=font)
    title = f"PSNR vs horizon, mean over {len(result.clips)} clip(s)"
    d.text(((x0 + x1) / 2 - d.textlength(title, font=font) / 2, 10), title, fill="black", font=font)
    # lines
    model_runs = [r for r in result.runs if r.s is not None]
    colours = {AUTOENCODER_NAME: (60, 140, 90)}  # the baseline stays grey
    for i, r in enumerate(model_runs):
        t = 0.85 * i / max(len(model_runs) - 1, 1)
        colours[r.name] = tuple(int(c) for c in colormap(np.array([t]))[0])
    for r, values in series:
        colour = colours.get(r.name, (128, 128, 128))
        pts = [(px(h), py(float(values[h - 1]))) for h in range(1, n + 1) if not math.isnan(values[h - 1])]
        if r.s is None:  # dashed
            for (ax, ay), (bx, by) in zip(pts, pts[1:]):
                steps = max(int(math.hypot(bx - ax, by - ay) // 6), 1)
                for k in range(0, steps, 2):
                    f0, f1 = k / steps, min((k + 1) / steps, 1.0)
                    d.line([(ax + (bx - ax) * f0, ay + (by - ay) * f0), (ax + (bx - ax) * f1, ay + (by - ay) * f1)],
                           fill=colour, width=2)
        elif len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        if n <= 48 or len(pts) <= 1:
            for x, y in pts:
                d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
    # legend
    lx, ly = x1 + 14, y0 + 4
    d.rectangle([lx - 6, ly - 6, width - 8, ly + 18 * len(series) + 2], outline=(160, 160, 160))
    for r, _ in series:
        colour = colours.get(r.name, (128, 128, 128))
        if r.s is None:
            d.line([(lx, ly + 6), (lx + 8, ly + 6)], fill=colour, width=2)
            d.line([(lx + 14, ly + 6), (lx + 22, ly + 6)], fill=colour, width=2)
        else:
            d.line([(lx, ly + 6), (lx + 22, ly + 6)], fill=colour, width=2)
        d.text((lx + 28, ly), r.name, fill="black", font=font)
        ly += 18
    if any_inf:
        d.text((lx - 6, ly + 10), "inf: identical frames", fill=(90, 90, 90), font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)

