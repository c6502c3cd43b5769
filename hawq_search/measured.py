"""Measured search objectives: the PTQ loss and top-1 of a solution's plan on held-out train
images (disjoint from the calibration images, never the test split), for Optuna trials and for
re-ranking the ILP's best plans."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hawq_search.data.datasets import TensorData
from hawq_search.evaluation import loss_and_top1
from hawq_search.inputs import heldout_data
from searches import Solution

if TYPE_CHECKING:
    from hawq_search.pipeline import Pipeline

__all__ = ["HeldoutMeasure"]


class HeldoutMeasure:
    """``measure(solution) -> {"loss", "top1"}``: the plan is built, quantized (BatchNorm
    correction as configured) and scored on ``config.heldout_size`` held-out train images.

    The held-out images are loaded on the first call and kept: every trial reuses them.
    """

    def __init__(self, pipe: Pipeline, data: TensorData | None = None) -> None:
        self.pipe = pipe
        self._data = data

    @property
    def data(self) -> TensorData:
        if self._data is None:
            self._data = heldout_data(self.pipe.config, self.pipe.loaded)
        return self._data

    def __call__(self, solution: Solution) -> dict[str, float]:
        plan = self.pipe.make_plan(dict(solution.layer_bits), dict(solution.act_bits))
        model = self.pipe.quantized_model(plan)
        loss, top1 = loss_and_top1(model, self.data)
        return {"loss": loss, "top1": top1}
