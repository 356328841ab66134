"""`ardiff-tui`: the terminal app's command line (and its headless --screenshot mode)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from app_tui.settings import (
    DEVICES,
    HISTORY_GUIDANCE_HELP,
    PRECISION_HELP,
    PRECISIONS,
    Settings,
    SettingsError,
    parse_history_guidance,
)
from engine.hub import checkpoint_arg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ardiff-tui",
                                description="Continue videos with AR-Diffusion, in a terminal.")
    p.add_argument("clip", nargs="?", help="video file, image (a one-frame clip) or frame folder to open")
    p.add_argument("--checkpoint", help="model checkpoint: a file, hf:OWNER/REPO[/FILE][@REV] or https://URL "
                                        "(default: the embedded model)")
    # No defaults here: an option not given keeps the remembered value (app_tui.prefs), else the engine's.
    p.add_argument("--device", help=f"{' | '.join(DEVICES)}")
    p.add_argument("--precision", choices=PRECISIONS, help=PRECISION_HELP)
    p.add_argument("--s", type=int, help="levels between neighbouring frames")
    p.add_argument("--frames", type=int, help="new frames to make")
    p.add_argument("--steps", type=int, help="DDIM steps per frame")
    p.add_argument("--context", type=int, help="frames taken from the end of the clip")
    p.add_argument("--seed", type=int)
    p.add_argument("--history-guidance", type=_history_guidance, metavar="W", help=HISTORY_GUIDANCE_HELP)
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for torch (default: the cores other work leaves free, less one for the "
                        "UI; also ARDIFF_THREADS)")
    p.add_argument("--no-images", action="store_true", help="text only: no graphics, no colour blocks")
    p.add_argument("--screenshot", metavar="PATH.svg",
                   help="render the app to an SVG and exit (no terminal; the engine's defaults, and the "
                        "remembered settings are neither read nor changed)")
    p.add_argument("--screenshot-after", type=int, metavar="N",
                   help="with --screenshot: generate, and take it when N new frames are made")
    p.add_argument("--size", default="120x36", help="with --screenshot: columns x rows (default 120x36)")
    return p


def _history_guidance(text: str) -> float | None:
    """--history-guidance: the form's own check, so a bad W stops here with the form's message."""
    try:
        return parse_history_guidance(text)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"ardiff-tui: error: --size must look like 120x36, got {text!r}") from None
    return cols, rows


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Torch's CPU thread pool busy-waits; with the UI thread on one of its cores both crawl, so the policy
    # keeps a core for the UI (engine.threads). It is applied where torch loads, on the worker thread, after
    # the layout is drawn: here the count is only checked.
    from engine.threads import configure_threads

    try:
        configure_threads(args.threads, reserve=1)
    except ValueError as err:
        print(f"ardiff-tui: error: {err}", file=sys.stderr)
        return 2
    from app_tui.prefs import Prefs

    prefs = None if args.screenshot else Prefs.load()
    settings = _settings(args, prefs.settings() if prefs else Settings())
    mode = "text" if args.no_images else ("halfcell" if args.screenshot else "auto")

    from app_tui.app import ArdiffApp
    from app_tui.widgets.preview import prepare_images

    try:
        prepare_images(mode)  # must ask the terminal before Textual takes it over
    except Exception as err:  # textual-image trips on odd terminals (0x0 size): fall back to cells
        print(f"ardiff-tui: no terminal graphics ({type(err).__name__}: {err}); drawing with text cells",
              file=sys.stderr)
        mode = "halfcell"
    if args.screenshot:
        return _screenshot(args, settings, mode)
    app = ArdiffApp(clip=args.clip, settings=settings, image_mode=mode, prefs=prefs)
    saved = app.run() or []
    for path in saved:
        print(f"ardiff-tui: saved {path}")
    if app.unsaved:
        print(f"ardiff-tui: {len(app.takes.unsaved())} take(s) were not saved", file=sys.stderr)
    return app.return_code or 0


def _settings(args: argparse.Namespace, base: Settings) -> Settings:
    """`base` (the remembered settings) with the options given on the command line."""
    given = {name: getattr(args, name) for name in ("s", "frames", "steps", "context", "seed", "device",
                                                    "precision", "history_guidance")
             if getattr(args, name) is not None}
    if args.checkpoint:
        given["checkpoint"] = checkpoint_arg(args.checkpoint)
    return dataclasses.replace(base, **given)


def _screenshot(args: argparse.Namespace, settings: Settings, mode: str) -> int:
    """Run headless at --size, wait for the clip (and N frames with --screenshot-after), write the SVG."""
    from app_tui.app import ArdiffApp

    out = Path(args.screenshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    after = (args.screenshot_after, str(out)) if args.screenshot_after else None
    app = ArdiffApp(clip=args.clip, settings=settings, image_mode=mode, screenshot_after=after,
                    preload_model=bool(after))

    async def pilot(pilot) -> None:
        await pilot.pause()
        if app.load_worker is not None:
            await app.load_worker.wait()  # the clip has loaded (or failed)
        await pilot.pause(0.2)
        if after:
            if app.model_worker is None:
                await pilot.pause(0.2)  # the preload starts after the first paint
            if app.model_worker is not None:
                await app.model_worker.wait()
            app.action_generate()
            return  # the app takes the picture at frame N and exits
        app.save_screenshot(filename=out.name, path=str(out.parent))
        app.exit([])

    app.run(headless=True, size=_size(args.size), auto_pilot=pilot)
    if app.errors:
        print(f"ardiff-tui: {app.errors[-1]}", file=sys.stderr)
    if not out.is_file():
        print(f"ardiff-tui: error: no screenshot written to {out}", file=sys.stderr)
        return 2
    print(f"ardiff-tui: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
