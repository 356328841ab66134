"""An evaluation's reports: results.md for people, results.json for programs, horizon.png beside them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from engine.evaluation.continuation import EvalResult, horizons_for
from engine.evaluation.plots import plot_horizon

_INF = "\x00ardiff-inf\x00"
_NEG_INF = "\x00ardiff-neg-inf\x00"


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def write_markdown(result: EvalResult, path: str | os.PathLike) -> Path:
    """results.md: the paper's Table 2 layout (rows = s, then the baseline; FVD, PSNR/SSIM, time)."""
    from engine.atomic import atomic_path

    hs = horizons_for(result.frames)
    fvd_keys = [k for k in ("fvd", "fvd_16", "fvd_128", "kvd") if any(k in r.fvd for r in result.runs)]
    fvd_titles = {"fvd": f"FVD (new {result.frames})", "fvd_16": "FVD_16 (new 1-16)",
                  "fvd_128": "FVD_128 (new 1-128)", "kvd": f"KVD (new {result.frames})"}
    head = ["s"] + ([fvd_titles[k] for k in fvd_keys] or ["FVD"]) + ["PSNR / SSIM avg"]
    head += [f"PSNR / SSIM @{h}" for h in hs] + ["Inference time (s / clip)", "frames/s"]
    lines = [
        "# Continuation evaluation",
        "",
        f"Model: {result.model}",
        "",
        f"{len(result.clips)} clip(s); context {result.context} frames, {result.frames} new frames, "
        f"DDIM steps {result.steps}, history guidance {result.history_guidance:g}, seed {result.seed} (clip i "
        f"uses seed + i). Frames at {result.resolution}x"
        f"{result.resolution}. PSNR in dB (inf: identical frames), SSIM in [0, 1]; @h = the h-th new frame "
        f"(compared with real frame context + h); avg = mean over all {result.frames} new frames and all clips.",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(head) - 1)) + " |",
    ]
    for r in result.runs:
        name = str(r.s) if r.s is not None else r.name
        cells = [name]
        if fvd_keys:
            cells += [_fmt(r.fvd.get(k), 3 if k == "kvd" else 1) for k in fvd_keys]
        else:
            cells.append("n/a")
        cells.append(f"{_fmt(r.psnr_mean)} / {_fmt(r.ssim_mean, 3)}")
        for h in hs:
            cells.append(f"{_fmt(float(r.psnr_per_horizon[h - 1]))} / {_fmt(float(r.ssim_per_horizon[h - 1]), 3)}")
        if r.s is None:
            cells += ["-", "-"]
        else:
            cells += [_fmt(r.seconds_per_clip, 2), _fmt(r.frames_per_second, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "PSNR per horizon: `horizon.png`; every number per clip and per horizon: `results.json`.", ""]
    lines.append(f"**FVD, KVD.** {result.fvd_definition}")
    if result.fvd_missing:
        lines.append(f"FVD is not reported: {result.fvd_missing}")
    elif len(result.clips) < 256:
        lines.append(f"Computed over only {len(result.clips)} clips: biased and noisy, comparable between the "
                     "rows of this table only (papers use 256 or more videos).")
    lines += ["", "**Timing.** Wall-clock seconds per clip from the `continue_video` call (context encoding "
              "included) to the last decoded frame, after one untimed warm-up; frames/s = new frames / time."]
    for note in result.notes:
        lines += ["", f"Note: {note}"]
    lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return Path(path)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return _INF if v > 0 else _NEG_INF
        return v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(result: EvalResult, path: str | os.PathLike) -> Path:
    """results.json: everything. Strict JSON: infinite PSNR (identical frames) is written as the number 1e999,
    which Python's json and JavaScript read back as infinity; NaN (no SSIM) as null."""
    from engine.atomic import atomic_path

    text = json.dumps(_jsonable(result.to_dict()), indent=2, allow_nan=False)
    text = text.replace(json.dumps(_INF), "1e999").replace(json.dumps(_NEG_INF), "-1e999")
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return Path(path)


def write_reports(result: EvalResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """results.md, results.json and horizon.png in `out_dir` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {"markdown": write_markdown(result, out / "results.md"), "json": write_json(result, out / "results.json"),
            "plot": plot_horizon(result, out / "horizon.png")}

