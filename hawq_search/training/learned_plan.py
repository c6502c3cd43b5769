"""Learned bit-widths and the pipeline: the learner over the plan's own search problem, and
the exact solver's snap of the learned widths back onto every budget.

The budgets are the plan's (``plan.budgets``) unless the user sets others, and the problem is
built at the plan's granularity, so the learner trades exactly what the search traded.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hawq_search.core.exceptions import UserInputError
from hawq_search.pipeline import Pipeline
from hawq_search.plan import Plan
from hawq_search.planning import plan_from_solution
from hawq_search.repricing import exact_hardware_totals, solve_within_exact_budgets
from hawq_search.training.distributed import DistContext
from hawq_search.training.learn_bits import BitLearner
from hawq_search.training.options import FinetuneOptions
from searches import IlpSearch, SearchProblem, Solution

__all__ = ["budget_pipeline", "make_learner", "snap_plan"]

SNAP_KEEP_ACT = 1e6  # objective charge of changing an activation width in the snap


def budget_pipeline(pipe: Pipeline, plan: Plan) -> Pipeline:
    """``pipe`` with the plan's budgets (where the user set none) and granularity."""
    b, c, changes = plan.budgets or {}, pipe.config, {}
    for field, key, scale in (
        ("budget_mb", "size_bytes", 1e-6),
        ("bops", "bops", 1.0),
        ("latency_ms", "latency_s", 1e3),
        ("energy_mj", "energy_j", 1e3),
    ):
        if getattr(c, field) is None and b.get(key) is not None:
            changes[field] = float(b[key]) * scale
    hardware = (changes.get("latency_ms") or changes.get("energy_mj")) is not None
    if hardware and b.get("accelerator") and c.accelerator is None:
        raise UserInputError(
            f"the plan's latency/energy budgets are on accelerator {b['accelerator']}: pass "
            "that accelerator",
            params=("accelerator",),
        )
    granularity = plan.provenance.get("granularity")
    if granularity and granularity != c.granularity:
        changes["granularity"] = granularity
    return pipe.variant(**changes) if changes else pipe


def _exact_ok(pipe: Pipeline):
    targets = {k: v for k, v in pipe.targets().items() if v is not None}
    if pipe.cost_model is None or not targets:
        return None, None

    def exact(solution: Solution) -> dict[str, float]:
        return exact_hardware_totals(pipe.graph, pipe.cost_model, solution)

    def ok(solution: Solution) -> bool:
        tot = exact(solution)
        return all(tot[k] <= t * (1 + 1e-9) for k, t in targets.items())

    return ok, exact


def make_learner(
    pipe: Pipeline, plan: Plan, opts: FinetuneOptions, ctx: DistContext | None = None
) -> tuple[BitLearner, Pipeline]:
    """The width learner of ``plan`` and the pipeline its budgets live on.

    Under torchrun (``ctx``) rank 0 computes the sensitivities and every process takes its
    problem, and each probe's loss is averaged over the processes' shares of the batch, so
    every process makes the same moves, the ones one process would make on the whole batch."""
    ctx = ctx or DistContext()
    bp = budget_pipeline(pipe, plan)
    problem = ctx.broadcast(bp.problem(bp.sensitivity()) if ctx.is_main else None)
    w, a = BitLearner.choice_of_plan(problem, plan)
    ok, _ = _exact_ok(bp)
    learner = BitLearner(
        problem, w, a, eta=opts.bits_lr, probes_per_step=opts.bits_probes,
        until=opts.bits_until, freeze_after=opts.bits_freeze, exact_ok=ok,
        reduce=ctx.all_reduce_mean,
    )  # fmt: skip
    return learner, bp


def _distance_problem(problem: SearchProblem, w: np.ndarray, a: np.ndarray) -> SearchProblem:
    """The problem whose objective is the distance (channels x options squared) from the
    learned widths, activation widths kept."""
    steps = np.arange(len(problem.w_bits), dtype=float)
    groups = [
        replace(g, loss=g.count * (steps - w[k]) ** 2) for k, g in enumerate(problem.weight_groups)
    ]
    act = np.where(np.arange(len(problem.a_bits))[None, :] == a[:, None], 0.0, SNAP_KEEP_ACT)
    return replace(problem, weight_groups=groups, act_loss=act)


def snap_plan(bp: Pipeline, learner: BitLearner) -> tuple[Plan, dict]:
    """The exact solver's plan nearest to the learned widths within every budget (the learned
    plan itself whenever it fits, which the learner keeps true), with its predicted losses."""
    table = bp.sensitivity()
    w, a = learner.w_choice, learner.a_choice
    _, exact = _exact_ok(bp)
    search = IlpSearch(time_limit=bp.config.time_limit_s, mip_rel_gap=bp.config.mip_gap)
    outcome = solve_within_exact_budgets(
        search, lambda hw: _distance_problem(bp.problem(table, hw), w, a), bp.targets(), exact
    )
    if not outcome.result.success:
        raise RuntimeError(f"snapping the learned widths failed: {outcome.result.message}")
    best, losses = outcome.result.best, bp.problem(table)
    priced = replace(outcome.problem, weight_groups=losses.weight_groups, act_loss=losses.act_loss)
    solution = priced.solution(best.w_choice, best.a_choice)
    plan = plan_from_solution(
        bp.plan_context(), priced, solution, outcome.result, bp.budgets(),
        {"search": "snap of learned widths"},
    )  # fmt: skip
    changed = int(np.sum(best.w_choice != w))
    return plan, {"snap_changed_groups": changed, "snap_distance": float(best.objective)}
