"""`ardiff-export CHECKPOINT -o OUT_DIR [--tensorrt | --aoti | --onnx] ...`: export the sampler's hot graphs.

User-fixable problems (not a checkpoint, a backend that is not installed, no CUDA, a failed validation, an
output folder holding other files, a read-only or full disk, no memory) print one line on stderr and exit with
code 2; Ctrl-C and SIGTERM leave no temp folder behind.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from engine.entry import run_entry


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ardiff-export",
        description="Export the DiT cached step and the incremental VAE decode step of an ardiff checkpoint "
                    "(AOTInductor, ONNX Runtime or TensorRT), validate them against the eager model and write "
                    "them with a manifest.json. Load them with load_pipeline(ckpt, backend=..., export_dir=...).")
    p.add_argument("checkpoint", help="an ardiff .safetensors checkpoint")
    p.add_argument("-o", "--output", required=True,
                   help="output directory: new, empty or a previous export (replaced atomically); a folder "
                        "holding anything else is refused, never deleted")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--tensorrt", dest="backend", action="store_const", const="tensorrt",
                       help="torch.export + torch_tensorrt.dynamo.compile (CUDA, pip install 'ardiff[tensorrt]')")
    which.add_argument("--aoti", dest="backend", action="store_const", const="aoti",
                       help="AOTInductor package (CPU or CUDA); the default")
    which.add_argument("--onnx", dest="backend", action="store_const", const="onnx",
                       help="ONNX (opset 18) for ONNX Runtime")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the graphs will run (default: cuda for --tensorrt, else cpu)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="precision of the graphs (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--max-frames", type=int, default=None,
                   help="largest number of frames (cached + active) a DiT call may see (default: the model's window)")
    p.add_argument("--max-batch", type=int, default=2, help="largest batch (2 covers classifier-free guidance)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backend = args.backend or "aoti"
    device = args.device or ("cuda" if backend == "tensorrt" else "cpu")
    log = (lambda _: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    written: list[Path] = []

    def body() -> int:
        from engine.backends.export import export

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export / onnx exporter chatter; errors still raise
            manifest = export(args.checkpoint, args.output, backend, device=device, dtype=args.dtype,
                              max_frames=args.max_frames, max_batch=args.max_batch, log=log)
        written.append(Path(args.output))
        v = manifest["validation"]
        print(f"exported {manifest['preset']} ({manifest['backend']}, {manifest['dtype']}, {manifest['device']}) "
              f"to {args.output}; validated: max abs err {v['max_abs_err']:.2e}, max rel err "
              f"{v['max_rel_err']:.2e}")
        return 0

    return run_entry("ardiff-export", body, written)


if __name__ == "__main__":
    sys.exit(main())
