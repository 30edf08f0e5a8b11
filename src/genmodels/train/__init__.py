"""The family-agnostic trainer and the run-directory files it writes."""

from .ema import EMA
from .trainer import Interrupted, Phase, Trainer

__all__ = ["EMA", "Interrupted", "Phase", "Trainer"]
