"""A Hugging Face Hub model card (README.md with YAML front matter) for a packaged checkpoint.

`ardiff-train package` writes it beside the checkpoint, so the folder can be uploaded as it is
(`hf upload OWNER/REPO FOLDER`) and then loaded with `--checkpoint hf:OWNER/REPO/FILE`. The front matter holds
what the Hub indexes: license, library, pipeline tag, tags, datasets and base model where known, and the
metrics ardiff evaluates a continuation model with; the body says what the checkpoint is, from its metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.atomic import atomic_path
from engine.models.presets import ModelConfig

CARD_MARK = "<!-- written by ardiff-train package -->"  # a README without it is the user's: never overwritten
TAGS = ["ardiff", "ar-diffusion", "video-generation", "video-continuation", "autoregressive", "diffusion"]
METRICS = ["fvd", "psnr", "ssim"]  # what `ardiff eval continue` reports


def card_path(checkpoint: Path) -> Path:
    """README.md beside the checkpoint, unless a README.md that ardiff did not write is there: then
    `<checkpoint stem>.README.md`, so nothing of the user's is overwritten."""
    readme = checkpoint.parent / "README.md"
    if readme.exists():
        try:
            ours = CARD_MARK in readme.read_text(encoding="utf-8", errors="replace")
        except OSError:
            ours = False
        if not ours:
            return checkpoint.parent / f"{checkpoint.stem}.README.md"
    return readme


def base_models(meta: dict[str, Any], sources: list[str]) -> list[str]:
    """Hub repos this checkpoint was fine-tuned from: hf: references among init_dit and the package sources."""
    refs = [str(r.get("init_dit", "")) for r in meta.get("recipe", []) if isinstance(r, dict)] + list(sources)
    found = []
    for ref in refs:
        if ref.startswith("hf:"):
            from engine.hub import parse_hf_ref

            repo = parse_hf_ref(ref).repo_id
            if repo not in found:
                found.append(repo)
    return found


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def render_card(checkpoint: Path, cfg: ModelConfig, meta: dict[str, Any], license: str = "apache-2.0",
                datasets: list[str] | None = None, sources: list[str] | None = None) -> str:
    """The card's text: YAML front matter (JSON-quoted strings are valid YAML) and a short markdown body."""
    bases = base_models(meta, sources or [])
    front = ["---", f"license: {json.dumps(license)}", "library_name: ardiff", "pipeline_tag: image-to-video",
             *_yaml_list("tags", TAGS), *_yaml_list("datasets", list(datasets or [])),
             *_yaml_list("base_model", bases), *_yaml_list("metrics", METRICS), "---"]
    v, d = cfg.vae, cfg.dit
    steps = meta.get("steps") or {}
    trained = ", ".join(f"{name} {count:,} steps" for name, count in steps.items()) or "not recorded"
    data = meta.get("data") or {}
    data_lines = [f"- {stage}: {info.get('report') or info.get('spec')}" for stage, info in data.items()
                  if isinstance(info, dict)] or ["- not recorded"]
    name = checkpoint.name
    body = [
        CARD_MARK,
        f"# {checkpoint.stem}",
        "",
        f"An ardiff (AR-Diffusion) checkpoint: an AR-VAE and a temporally causal DiT that "
        f"continue a video (or start from one still image) frame by frame. Preset `{cfg.name}`: "
        f"{v.image_size}x{v.image_size} frames, window {cfg.window}, DiT hidden {d.hidden}, depth {d.depth}.",
        "",
        "## Use",
        "",
        "```sh",
        f"ardiff continue clip.mp4 -o out.mp4 --checkpoint hf:OWNER/REPO/{name}",
        f"ardiff continue photo.png -o out.mp4 --checkpoint hf:OWNER/REPO/{name}",
        "```",
        "",
        "The file is safetensors with JSON metadata (`ardiff info` prints it); loading never unpickles.",
        "",
        "## Training",
        "",
        f"- stages: {trained}",
        f"- weights: {meta.get('weights', 'not recorded')} (EMA decay {meta.get('ema_decay', 'not recorded')})",
        f"- base model: {', '.join(bases) if bases else 'none (trained from scratch)'}",
        "",
        "Data:",
        "",
        *data_lines,
        "",
        "## Evaluation",
        "",
        "Measure it with `ardiff eval continue --checkpoint FILE --clips FOLDER` (FVD, PSNR and SSIM per "
        "horizon) and add the numbers here.",
        "",
    ]
    return "\n".join(front + body)


def write_model_card(checkpoint: str | Path, cfg: ModelConfig, meta: dict[str, Any], license: str = "apache-2.0",
                     datasets: list[str] | None = None, sources: list[str] | None = None) -> Path:
    """Write the card beside `checkpoint` (atomically) and return its path."""
    checkpoint = Path(checkpoint)
    path = card_path(checkpoint)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render_card(checkpoint, cfg, meta, license, datasets, sources), encoding="utf-8")
    return path
