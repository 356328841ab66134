"""Timestep schedulers: FoPP and baselines for training, AD rows for inference."""

from engine.schedulers.ad import ADScheduler, Row
from engine.schedulers.fopp import (
    CleanPrefix,
    EqualScheduler,
    FoPPScheduler,
    IndependentScheduler,
    NaiveNonDecreasingScheduler,
    TrainingScheduler,
    make_training_scheduler,
)

__all__ = [
    "ADScheduler", "Row", "CleanPrefix", "EqualScheduler", "FoPPScheduler", "IndependentScheduler",
    "NaiveNonDecreasingScheduler", "TrainingScheduler", "make_training_scheduler",
]
