"""Settings of a fine-tune, validated in library terms (torch-free, for the CLI)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hawq_search.core.exceptions import UserInputError

__all__ = ["LR_SCHEDULES", "ORDERS", "SCHEDULES", "FinetuneOptions"]

SCHEDULES = ("gradual", "direct", "ctmq")
ORDERS = ("sensitivity", "reverse", "random")
LR_SCHEDULES = ("run", "phase")


@dataclass
class FinetuneOptions:
    """Defaults are a CIFAR fine-tuning recipe: SGD 0.9, lr 0.01 (a tenth of from-scratch
    training), one cosine per phase (a single phase for ``direct``), wd 5e-4 (none on step
    sizes), batch 128, Hinton KD from the float model with T = 4 and alpha = 0.9 (the teacher
    carries most of the signal at low bits), BatchNorm statistics live throughout. The
    per-phase cosine with live BatchNorm ended the 1-epoch CTMQ collapse and lifted 2-bit
    gradual runs, though the classic recipe (``lr_schedule="run"``, ``freeze_bn_epochs=1``)
    scored higher at 3 bits, 3 epochs (benchmarks/results/finetune.md)."""

    epochs: int = 1
    schedule: str = "gradual"
    order: str = "sensitivity"
    stages: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    cycles: int = 2
    final_share: float = 0.5  # steps at the planned widths (gradual, ctmq); the rest ramps
    ladder_top: int = 8
    lr: float = 0.01
    # "run": one cosine over every step; "phase": each phase (a gradual stage, a CTMQ rung) its
    # own cosine from ``lr`` with the momentum reset, as CTMQ trains each rung as a run of its own
    lr_schedule: str = "phase"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.9
    kd: bool = True
    feature_kd: float = 0.0  # weight of channel-attention feature distillation (0 = off)
    augment: bool = True
    freeze_bn_epochs: int = 0
    train_size: int = 0
    seed: int = 0
    resume: bool = False
    learn_bits: bool = False  # AdaQAT widths (see training.learn_bits)
    bits_lr: float = 0.25  # largest move of a width's real position per probe
    bits_probes: int = 1  # groups probed per step (one no-grad forward each)
    bits_until: float = 0.75  # fraction of the steps during which widths are learned
    bits_freeze: int = 10  # upward moves from one width before it freezes

    def validate(self) -> None:
        """Raise :class:`UserInputError` naming the first invalid argument."""
        _int("epochs", self.epochs, 1)
        _int("cycles", self.cycles, 1)
        _int("batch_size", self.batch_size, 1)
        _int("freeze_bn_epochs", self.freeze_bn_epochs, 0)
        _int("train_size", self.train_size, 0)
        _int("ladder_top", self.ladder_top, 2)
        _int("bits_probes", self.bits_probes, 1)
        _int("bits_freeze", self.bits_freeze, 1)
        if self.learn_bits and self.schedule == "ctmq":
            raise UserInputError(
                "learned bit-widths work with the direct and gradual schedules, not ctmq (its "
                "ladder sets every width): drop learn_bits or pick another schedule",
                params=("learn_bits", "schedule"),
            )
        if self.feature_kd > 0 and not self.kd:
            raise UserInputError(
                "feature distillation needs the float teacher: drop no_kd or feature_kd",
                params=("feature_kd", "no_kd"),
            )
        for name in ("bits_lr", "bits_until", "final_share"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 1):
                raise UserInputError(f"{name} must be in (0, 1], got {v}", params=(name,))
        if self.schedule not in SCHEDULES:
            raise UserInputError(
                f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}",
                params=("schedule",),
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserInputError(
                f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}",
                params=("lr_schedule",),
            )
        if self.order not in ORDERS:
            raise UserInputError(
                f"order {self.order!r} is not one of {', '.join(ORDERS)}", params=("order",)
            )
        s = list(self.stages)
        if not s or any(not 0 < f <= 1 for f in s) or s != sorted(set(s)) or s[-1] != 1:
            raise UserInputError(
                f"stages must be increasing fractions in (0, 1] ending at 1, got {self.stages}",
                params=("stages",),
            )
        for name in ("lr", "temperature"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise UserInputError(f"{name} must be a finite number > 0, got {v}", params=(name,))
        for name, hi in (("momentum", 1.0), ("alpha", 1.0)):
            v = getattr(self, name)
            if not 0 <= v <= hi:
                raise UserInputError(f"{name} must be in [0, {hi}], got {v}", params=(name,))
        for name in ("weight_decay", "feature_kd"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise UserInputError(
                    f"{name} must be a finite number >= 0, got {v}", params=(name,)
                )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserInputError(f"{name} must be an integer >= {low}, got {value!r}", params=(name,))
