"""`ardiff-train`: train the AR-VAE (image, then temporal stage) and the AR-Diffusion DiT; package the result.

    ardiff-train vae-image    --config tiny --run-dir runs/vae-img
    ardiff-train vae-temporal --config tiny --set vae=runs/vae-img --run-dir runs/vae-tmp
    ardiff-train diffusion    --config tiny --set vae=runs/vae-tmp --run-dir runs/dit [--resume]
    ardiff-train package --vae runs/vae-tmp --diffusion runs/dit -o model.safetensors [--dtype bf16]
    ardiff-train prepare videos/*.mp4 -o data/train-64 --size 64        (decode once at training size)
    torchrun --nproc_per_node=K -m trainer.cli diffusion ...        (DDP; or the ardiff-train script path)

Every problem a user can fix ends as one line on stderr and exit code 2; Ctrl-C / SIGTERM save the state
and exit with 130 (resume with --resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Sequence

from engine.entry import run_entry
from engine.errors import ArdiffError
from trainer.config import STAGES, TrainConfig, load_config

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ardiff-train", description="Train ardiff models (AR-VAE, AR-Diffusion).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"vae-image": "AR-VAE, per-frame stage (encoder + decoder; L1, then + hinge GAN)",
             "vae-temporal": "AR-VAE, temporal stage (the decoder's causal cross-frame attention)",
             "diffusion": "AR-Diffusion DiT on the latents of a trained VAE (FoPP compositions)"}
    for stage in STAGES:
        p = sub.add_parser(stage, help=helps[stage])
        p.add_argument("--config", help="TOML file or a packaged config name (tiny, default, paper)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                       help="override a config key (repeatable)")
        p.add_argument("--run-dir", required=True, help="directory for checkpoints, metrics and the loss curve")
        p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint")
        p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
        p.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch per process (default: the free cores, shared by the "
                            "ranks on this machine; also ARDIFF_THREADS)")
        p.set_defaults(func=cmd_train, stage=stage)
    p = sub.add_parser("package", help="EMA weights of a VAE run and a diffusion run -> one checkpoint")
    p.add_argument("--vae", help="the VAE run (default: the one the diffusion run recorded)")
    p.add_argument("--diffusion", required=True,
                   help="the diffusion run, or a packaged checkpoint (its DiT; --vae then a decoder fine-tune of its VAE)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weight dtype to ship")
    p.add_argument("--history-guidance", type=float, default=None, metavar="W",
                   help="the history guidance the engine samples this model with by default (1 = off)")
    p.add_argument("--license", default="apache-2.0", help="license in the model card beside the checkpoint")
    p.add_argument("--dataset", action="append", default=[], metavar="HUB_ID",
                   help="a Hub dataset the model was trained on, for the model card (repeatable)")
    p.set_defaults(func=cmd_package)
    p = sub.add_parser("prepare", help="shrink videos to training size once (PNG frame folders)")
    p.add_argument("sources", nargs="+", help="video files or frame folders, or synthetic:bouncing")
    p.add_argument("-o", "--output", required=True, help="folder to write one frame folder per source into")
    p.add_argument("--size", type=int, default=64, help="frame side in pixels (the preset's image size)")
    p.add_argument("--frame-stride", type=int, default=1, help="keep every k-th frame")
    p.add_argument("--split-shots", action="store_true", help="one folder per shot (for evaluation sets)")
    p.add_argument("--min-frames", type=int, default=1, help="with --split-shots: drop shorter shots")
    p.add_argument("--count", type=int, default=32, help="synthetic: how many clips")
    p.add_argument("--frames", type=int, default=32, help="synthetic: frames per clip")
    p.add_argument("--seed", type=int, default=1, help="synthetic: dataset seed (training uses 0)")
    p.set_defaults(func=cmd_prepare)
    return parser


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    base = None
    if args.resume:
        from pathlib import Path

        from trainer.state import latest_checkpoint, read_checkpoint

        path = latest_checkpoint(Path(args.run_dir)) if Path(args.run_dir).is_dir() else None
        if path is None:
            raise ArdiffError(f"--resume: {args.run_dir} has no checkpoint to resume from")
        base = read_checkpoint(path)[0]["train_config"]
    return load_config(args.stage, args.config, args.sets, base=base)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    import os

    from engine.threads import apply_thread_policy

    # before torch loads; torchrun's ranks on one machine share its cores
    apply_thread_policy(args.threads, processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    from trainer.train import train

    result = train(cfg, args.run_dir, resume=args.resume)
    return EXIT_INTERRUPTED if result.stopped else 0


def cmd_package(args: argparse.Namespace) -> int:
    from trainer.model_card import card_path
    from trainer.package import package

    path = package(args.diffusion, args.output, vae=args.vae, dtype=args.dtype,
                   history_guidance=args.history_guidance, license=args.license, datasets=args.dataset)
    print(f"ardiff-train: wrote {path} and its model card {card_path(path)}", file=sys.stderr)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from trainer.prepare import prepare_sources, prepare_synthetic

    def log(line: str) -> None:
        print(f"ardiff-train: {line}", file=sys.stderr)

    videos = [s for s in args.sources if not s.startswith("synthetic:")]
    for spec in args.sources:
        if spec.startswith("synthetic:"):
            prepare_synthetic(spec, args.output, args.size, args.count, args.frames, args.seed, log=log)
    if videos:
        prepare_sources(videos, args.output, args.size, args.frame_stride, args.split_shots, args.min_frames,
                        log=log)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a skipped data file, a stale lock taken over) as one line each, without a source line."""
    print(f"ardiff-train: warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    old_show = warnings.showwarning
    warnings.showwarning = _show_warning
    code = 1
    try:  # SIGTERM unwinds as Ctrl-C does (releasing the run dir's lock); inside the loop train() saves first
        code = run_entry("ardiff-train", lambda: args.func(args), [], expected=(ValueError,),
                         memory_hint="lower batch_size or num_frames, or use a smaller preset",
                         interrupt_note="no checkpoint written for the unfinished step")
        return code
    finally:
        warnings.showwarning = old_show
        from trainer.runtime import leave_process_group

        leave_process_group(finished=code == 0)


if __name__ == "__main__":
    sys.exit(main())
