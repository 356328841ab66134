"""What a run was made from, as typed records: the VAE its latents come from and the data it read.

Both are saved in every checkpoint's state.json ("vae_source", "data") and read back by later stages and by
packaging. The JSON keys are the field names, in field order, so checkpoints written before these records
existed (and the shipped model's recipe) read the same; a key this version does not know is ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class VAEProvenance:
    """A VAE's identity and history: where it was loaded from, its weights' digests, its latent scale, the data
    it was trained on and every stage it went through. A diffusion run records the one its latents came from."""

    path: str | None = None  # resolved path of the run dir or checkpoint file
    kind: str | None = None  # "run" | "checkpoint"
    stage: str | None = None  # the source run's stage, or "checkpoint"
    step: int | None = None  # optimizer steps of the source run (a checkpoint's own "steps" record)
    latent_scale: float | None = None  # the scale the latents were multiplied by (after any re-measure)
    latent_scale_measured: bool = False  # False: the source run stopped before its end-of-run measurement
    digest: str | None = None  # all weights (trainer.state.weights_digest)
    encoder_digest: str | None = None  # the encoder's weights alone: what a DiT trained on its latents depends on
    data: Any = None  # the source's data record(s), as its checkpoint stored them
    recipe: list[dict] = field(default_factory=list)  # every stage the VAE went through, oldest first
    latent_scale_measured_by: str | None = None  # set when a diffusion run measured a never-measured scale
    latent_channel_scale: list[float] | None = None  # latent_norm=channel: per-channel factors folded in

    def to_json(self) -> dict[str, Any]:
        """The "vae_source" object of a checkpoint (the two late fields only when set, as before)."""
        out = dataclasses.asdict(self)
        for late in ("latent_scale_measured_by", "latent_channel_scale"):
            if out[late] is None:
                del out[late]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> VAEProvenance | None:
        """A stored "vae_source" (None stays None; unknown keys are ignored, missing ones default)."""
        if data is None:
            return None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def same_latents(self, other: VAEProvenance) -> bool:
        """Whether two VAEs give the same latents: the same encoder weights and latent scale. A diffusion run
        with per-channel latent normalisation records the scale after its fold (1.0) and the fold itself, which
        packaging applies again: there the encoder alone decides."""
        if self.latent_channel_scale is not None:
            return self.encoder_digest == other.encoder_digest
        return (self.encoder_digest, self.latent_scale) == (other.encoder_digest, other.latent_scale)


@dataclass
class DataRecord:
    """The data a stage read: its spec, clip length, item count, the dataset's report and what it skipped."""

    spec: str
    num_frames: int
    items: int
    report: str
    skipped: dict[str, int]

    @classmethod
    def of(cls, spec: str, num_frames: int, dataset) -> DataRecord:
        report = getattr(dataset, "report", None)
        return cls(spec=spec, num_frames=num_frames, items=len(dataset),
                   report=str(report) if report is not None else f"{len(dataset)} synthetic items",
                   skipped=dict(getattr(report, "skipped", {}) or {}))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
