"""The precisions a pipeline runs at, as every surface offers them; no torch here, so the apps can read it
before torch has loaded (their windows and --help come up at once)."""

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
