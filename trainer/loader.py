"""The batches a run trains on: its dataset from the config, and an endless, resumable stream of this rank's
batches (shuffled per epoch from the seed, so a resumed run reads exactly what an uninterrupted one would).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from engine.errors import ArdiffError
from trainer.config import ConfigError, TrainConfig


def build_dataset(cfg: TrainConfig, num_frames: int, size: int, quiet: bool):
    """The dataset of `cfg.data` (a folder or file of videos, or synthetic:NAME) at clips of `num_frames`."""
    from trainer.data import make_dataset

    if not cfg.data.startswith("synthetic:") and not Path(cfg.data).exists():
        raise ConfigError(f"data: {cfg.data} does not exist (give a folder of videos or synthetic:bouncing)")
    kwargs: dict[str, Any] = {}
    if cfg.data.startswith("synthetic:"):
        kwargs["num_items"] = cfg.num_items
    else:
        kwargs["cache_dir"] = cfg.data_cache or None
        if num_frames > 1:
            kwargs["frame_stride"] = cfg.frame_stride
        else:
            kwargs["frame_every"] = cfg.frame_every
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        try:
            return make_dataset(cfg.data, num_frames, size, seed=cfg.seed, flip=cfg.flip, **kwargs)
        except ArdiffError:
            raise
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled per epoch from `seed + epoch`, drop_last) that can start mid-epoch."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class Batches:
    """This rank's batches, epoch after epoch, from a data position (`epoch`, `batch` read in it) that it
    keeps up to date: the position a checkpoint saves. `dataset` may be replaced before the first batch by
    one of the same length (the diffusion stage's cached latents); the shuffle depends on the length only."""

    def __init__(self, dataset, cfg: TrainConfig, rank: int, world: int, pin_memory: bool) -> None:
        self.dataset, self.cfg, self.pin_memory = dataset, cfg, pin_memory
        self.sampler = ResumableSampler(dataset, world, rank, cfg.seed)
        if len(self.sampler) // cfg.batch_size < 1:
            raise ConfigError(f"data: {len(dataset)} items is fewer than one global batch "
                              f"({cfg.batch_size * world}); lower batch_size or add data")
        self.epoch, self.batch = 0, 0
        self._loader_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self._stream: Iterator[torch.Tensor] | None = None

    def seek(self, epoch: int, batch: int) -> None:
        """Start at batch `batch` of epoch `epoch` (a resumed run's data position)."""
        self.epoch, self.batch = epoch, batch

    def __next__(self) -> torch.Tensor:
        if self._stream is None:  # started on first use: after a resume has set the position
            self._stream = self._batches()
        return next(self._stream)

    def _batches(self) -> Iterator[torch.Tensor]:
        cfg = self.cfg
        while True:
            self.sampler.set_epoch(self.epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            self.sampler.skip = self.batch * cfg.batch_size
            loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler,
                                num_workers=cfg.num_workers, drop_last=True, pin_memory=self.pin_memory,
                                generator=self._loader_gen)
            for x in loader:
                self.batch += 1
                yield x
            self.epoch, self.batch = self.epoch + 1, 0
