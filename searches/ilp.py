"""Exact search: the problem as a mixed-integer linear program solved by HiGHS (scipy.optimize.milp).

Formulation (one-hot, a multiple-choice knapsack with side constraints):

* ``x[g, i]`` in {0, 1}: weight group ``g`` takes weight option ``i``; ``sum_i x[g, i] = 1``.
* ``y[a, j]`` in {0, 1}: activation group ``a`` takes activation option ``j``; ``sum_j y[a, j] = 1``.
* Costs that depend on both the weight bits of a layer's channels and the bits of its input
  activation (BOPs, latency) are linearised exactly with continuous ``u[l, i, j] >= 0``:
  ``sum_j u[l, i, j] = n[l, i]`` (channels of layer ``l`` at option ``i``) and
  ``u[l, i, j] <= C_l * y[a(l), j]``. Since exactly one ``y[a(l), j]`` is 1, ``u[l, i, j]`` equals
  ``n[l, i]`` for that ``j`` and 0 otherwise. The core method adds the valid rows
  ``lo_l y[a(l), j] <= sum_i u[l, i, j] <= hi_l y[a(l), j]`` (``lo_l``, ``hi_l``: the least and
  most count units the layer can have), which the per-option caps alone leave out: on ResNet-50
  with 4/8-bit activations on BitFusion they lift the LP bound from 4 % to 0.2 % below the
  optimum, so reduced-cost fixing leaves a far smaller core.
* A resource may count a layer's channels in tiles of ``q`` (an accelerator's output-channel
  array width): integer ``t[l, i] = ceil(n[l, i] / q)`` (``n <= q t <= n + q - 1``) replaces ``n[l, i]`` in its costs, so a
  sub-kernel of 3 channels pays for a whole tile, as the hardware does.
* A resource that rounds a per-layer sum up to whole units (bytes of packed bits) gets an
  integer ``r[l]`` with ``0 <= r - sum < 1``, so a size budget is exact to the byte.
* Layers whose groups are interchangeable (equal channel counts, allowed options and costs,
  e.g. every channel of a per-channel plan) use integer counts ``m[l, i] = sum_g x[g, i]`` and
  continuous ``x``: all costs depend on the counts only, and for integer counts the assignment
  of groups to options is a transportation problem with integral vertices. A ResNet-50 then has
  a few hundred integer variables instead of 165k binaries.
* Per-group overheads use indicators ``z[l, i] >= x[g, i]`` for every group ``g`` of ``l``.

The objective (predicted loss increase, values around 1e-9..1e-3) is scaled so that its total
range is about 1e3: HiGHS's absolute tolerances otherwise make it stop at once at a poor point.

Solving (``method="core"``, the default; exact within ``mip_rel_gap``):

1. A problem whose budgets are separable per group (size, BOPs under fixed activation bits) is a
   plain multiple-choice knapsack: its Lagrangian bound and a greedy plan
   (:mod:`searches._mckp`) prove the gap without any MILP when they meet (large models);
   otherwise small *knapsack core* MILPs over the options of small Lagrangian reduced cost
   (:mod:`searches._mckp_core`, plain binaries and one row per budget) usually prove it.
2. A problem whose coupling is per activation group (several activation options, tile prices,
   kernel overheads; no per-layer roundings) is searched over *block configurations*
   (:mod:`searches._blocks`, :mod:`searches._blocks_solve`): a Lagrangian bound that keeps each
   activation group integral, and one plain knapsack per configuration whose reduced cost is
   below the incumbent's loss (ResNet-50 per channel on a T4 with A4/A8: 12 configurations,
   0.4 s, where the LP-based core below stopped at 30 s with a 4.5e-3 gap).
3. Otherwise the bound (Lagrangian, or the LP relaxation when overheads, roundings or several
   activation options couple groups) fixes every column whose reduced cost exceeds what a
   better plan could afford, and HiGHS solves the small core MILP left
   (:mod:`searches._milp_solve`). Steps 1 and 2 fall through to it when they cannot prove the
   gap.

``method="highs"`` is HiGHS's branch-and-bound on the whole one-hot model, the reference the
core method is checked and timed against. ``n_solutions=K`` returns the K best distinct plans
via no-good cuts (:meth:`MilpBuilder.no_good_cut`).
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
from scipy.optimize import milp

from searches._base import BaseSearch
from searches._blocks import block_problem
from searches._blocks_solve import solve_blocks
from searches._mckp import separable_knapsack, solve_knapsack
from searches._milp_model import MilpBuilder
from searches._milp_solve import (
    LpBound,
    Model,
    Outcome,
    quiet_stdout,
    solve_core,
    solve_from_bound,
    solve_plain,
)
from searches.problem import SearchProblem
from searches.result import SearchResult, SearchStatus

__all__ = ["IlpSearch", "resource_range"]


def resource_range(problem: SearchProblem, name: str) -> tuple[float, float]:
    """Smallest and largest value resource ``name`` can take over all plans (budgets ignored)."""
    r = problem.resource(name)
    b = MilpBuilder(problem, [r], counts=len(problem.weight_groups) * len(problem.w_bits) >= 20_000)
    b.structural_rows()
    c = b.resource_coefficients(r)
    c = c / max(float(np.abs(c).max()), 1e-300)  # seconds or joules sit below HiGHS's tolerances
    bounds, integrality = b.bounds_and_integrality()
    cons = b.constraint([])
    out = []
    for sign in (1.0, -1.0):
        with quiet_stdout():
            res = milp(sign * c, integrality=integrality, bounds=bounds, constraints=cons)
        if res.x is None:
            out.append(float("nan"))
            continue
        w, a = b.decode(res.x)
        out.append(problem.objective_and_totals(w, a)[1][name])
    return out[0], out[1]


METHODS = ("core", "highs")


class IlpSearch(BaseSearch):
    """Exact MILP search with HiGHS.

    ``method="core"`` (default): the LP bound, reduced-cost fixing and a small core MILP, exact
    within the gap and fast on every budget (see :mod:`searches._milp_solve`);
    ``method="highs"``: HiGHS's branch-and-bound on the whole one-hot model, the reference.

    Args:
        time_limit: seconds for the whole call before the best plans so far are returned
            (status FEASIBLE).
        mip_rel_gap: relative optimality gap at which a plan counts as optimal, measured on the
            loss the search can still remove (the objective less every group's least loss);
            ``stats["mip_gap"]`` is the gap proven for the best plan.
        n_solutions: return up to this many distinct plans in ``SearchResult.solutions``, best
            first, each within every budget and within ``mip_rel_gap`` of the best plan not
            listed before it (found by no-good cuts). Two plans are *distinct* when they differ
            in the activation option of an activation group, in the weight option of a weight
            group of a layer whose groups are not interchangeable, or, in a layer whose groups
            are interchangeable (equal channel counts, allowed options and budgeted weight
            costs: a per-channel layer), in how many groups take some option: plans that only
            swap options between such groups are one plan (its least-loss assignment).
        counts_above: weight groups x options from which the core method models layers of
            interchangeable groups by integer option counts (0: always).
    """

    name = "ilp-highs"

    def __init__(
        self,
        *,
        time_limit: float = 60.0,
        mip_rel_gap: float = 1e-4,
        n_solutions: int = 1,
        method: str = "core",
        counts_above: int = 0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if n_solutions < 1:
            raise ValueError(f"n_solutions must be >= 1, got {n_solutions}")
        self.time_limit = time_limit
        self.mip_rel_gap = mip_rel_gap
        self.n_solutions = int(n_solutions)
        self.method = method
        self.counts_above = counts_above

    def describe(self) -> dict:
        return {
            "search": self.name,
            "method": self.method,
            "time_limit_s": self.time_limit,
            "mip_rel_gap": self.mip_rel_gap,
            "n_solutions": self.n_solutions,
        }

    def solve(self, problem: SearchProblem) -> SearchResult:
        """Solve; a resource whose per-layer rounding has an exact linear form
        (``round_reserve``) is solved with it instead of integer variables, which slow HiGHS's
        branch-and-bound by an order of magnitude (ResNet-56 per channel, size + BOPs: 60 s
        unfinished vs 1.9 s)."""
        linear = [
            r for r in problem.resources
            if r.budget is not None and r.round_up and r.round_reserve is not None
        ]  # fmt: skip
        if not linear:
            return self._solve(problem)
        relaxed = copy.copy(problem)
        relaxed.resources = [
            dataclasses.replace(r, round_up={}, slack=r.slack + r.round_reserve)
            if r in linear else r
            for r in problem.resources
        ]  # fmt: skip
        res = self._solve(relaxed)
        # Totals with the exact rounding: the solutions of the problem asked, not the relaxed one.
        return dataclasses.replace(
            res, solutions=tuple(problem.solution(s.w_choice, s.a_choice) for s in res.solutions)
        )

    def _solve(self, problem: SearchProblem) -> SearchResult:
        t0 = time.perf_counter()
        ks = separable_knapsack(problem) if self.method == "core" else None
        quick = None if ks is None else solve_knapsack(ks, self.mip_rel_gap, 0.5 * self.time_limit)
        first = None
        if quick is not None and quick.plan is not None:
            sol = problem.solution(quick.plan[: ks.n_weight], quick.plan[ks.n_weight :])
            first = (sol, quick.gap) if sol.within(problem) else None
        blocks = None
        if ks is None and self.method == "core":
            blocks = _solve_blocks(problem, self.mip_rel_gap, 0.5 * self.time_limit)
            first = None if blocks is None else blocks[0]
        if first is not None and self.n_solutions == 1:
            elapsed = time.perf_counter() - t0
            if blocks is not None:
                info = blocks[1]
                return _fast_result(
                    first, elapsed, "block configurations",
                    "block Lagrangian bound + knapsack per configuration (numpy, HiGHS cores)",
                    n_configurations=info.get("configs"),
                    objective_scale=info.get("objective_scale"),
                    lagrangian_bound=info.get("lagrangian_bound"),
                )  # fmt: skip
            return _fast_result(
                first, elapsed, "knapsack", "Lagrangian bound + greedy plan (numpy)",
                n_vars=len(problem.weight_groups) * len(problem.w_bits),
            )  # fmt: skip
        if quick is not None and quick.bound > _largest_loss(ks) * (1 + 1e-9) + 1e-300:
            # The bound exceeds every plan's loss: no plan meets the budgets.
            stats = {
                "method": "knapsack",
                "mip_gap": None,
                "solve_time_s": time.perf_counter() - t0,
            }
            return SearchResult(SearchStatus.INFEASIBLE, _infeasible_message(problem), stats=stats)
        active = [r for r in problem.resources if r.budget is not None]
        size = len(problem.weight_groups) * len(problem.w_bits)
        core = self.method == "core"
        b = MilpBuilder(problem, active, counts=core and size >= self.counts_above, tight=core)
        b.structural_rows()
        c, scale = b.objective()
        extra = [(b.resource_coefficients(r), r.limit) for r in active]
        bounds, integrality = b.bounds_and_integrality()
        model = Model.of(c * scale, bounds, integrality, b.constraint(extra), b.cut_rows)
        build_s = time.perf_counter() - t0
        start = None if quick is None else _bound_of(b, model, ks, quick, scale)
        outcomes, solutions = self._plans(b, model, problem, t0 + self.time_limit, first, start)
        head = outcomes[0]
        stats = {
            "solver": "scipy.optimize.milp (HiGHS)",
            "method": _method_name(
                self.method, start is not None, first is not None, blocks is not None
            ),
            "build_time_s": build_s,
            "solve_time_s": time.perf_counter() - t0 - build_s,
            "mip_gap": head.gap,
            "n_vars": b.n,
            "n_binary": int(integrality.sum()),
            "n_constraints": len(b.rows) + len(extra),
            "objective_scale": scale,
            "n_solutions": len(solutions),
            "solution_gaps": [o.gap for o in outcomes if o.x is not None],
            "highs_message": head.message,
            **{k: v for k, v in head.info.items() if k in ("lp_bound", "rounds", "core_columns")},
        }
        if head.status == "infeasible":
            return SearchResult(SearchStatus.INFEASIBLE, _infeasible_message(problem), stats=stats)
        if not solutions:
            return SearchResult(SearchStatus.ERROR, head.message, stats=stats)
        proven = all(o.status == "optimal" for o in outcomes if o.x is not None)
        status = SearchStatus.OPTIMAL if proven else SearchStatus.FEASIBLE
        return SearchResult(status, head.message, tuple(solutions), stats)

    def _plans(self, b: MilpBuilder, model: Model, problem, deadline, first, start):
        """Up to ``n_solutions`` plans, each the best not excluded by the no-good cuts of the
        plans before it (``first``: one already found; ``start``: a bound with reduced costs
        for every solve instead of the LP); returns (outcomes, solutions best first)."""
        solve = solve_core if self.method == "core" else solve_plain
        outcomes: list[Outcome] = []
        solutions = []
        if first is not None:
            sol, gap = first
            outcomes.append(
                Outcome("optimal", np.zeros(0), message="knapsack bound", proven_gap=gap)
            )
            solutions.append(sol)
            model = model.extended(*b.no_good_cut(sol.w_choice, sol.a_choice, model.n))
        while len(solutions) < self.n_solutions:
            left = deadline - time.perf_counter()
            if solutions and left <= 0:
                break
            if start is not None:  # the bound holds for every plan, so for those left too
                out = solve_from_bound(
                    model, start.padded(model.n), self.mip_rel_gap, max(left, 1.0)
                )
            else:
                out = solve(model, self.mip_rel_gap, max(left, 1.0))
            outcomes.append(out)
            if out.x is None:
                break
            w, a = b.decode(out.x)
            solutions.append(problem.solution(w, a))
            if len(solutions) < self.n_solutions:
                model = model.extended(*b.no_good_cut(w, a, model.n))
        solutions.sort(key=lambda s: s.objective)  # within the gap, a later plan can be better
        return outcomes, solutions


def _method_name(method: str, from_knapsack: bool, first_proven: bool, blocks: bool) -> str:
    if method == "highs":
        return "branch-and-bound"
    if first_proven and blocks:
        return "block configurations, then LP bound + reduced-cost core MILP"
    if first_proven:
        return "knapsack, then Lagrangian bound + reduced-cost core MILP"
    return ("Lagrangian" if from_knapsack else "LP") + " bound + reduced-cost core MILP"


def _solve_blocks(problem: SearchProblem, gap: float, time_limit: float):
    """The block search's plan when it proves the gap: ((solution, gap), info), else None."""
    bp = block_problem(problem)
    if bp is None:
        return None
    res = solve_blocks(bp, gap, time_limit)
    res.info["objective_scale"] = bp.scale
    if res.w is None or res.gap is None or res.gap > gap * (1 + 1e-9):
        return None
    sol = problem.solution(res.w, res.a)
    return ((sol, res.gap), res.info) if sol.within(problem) else None


def _fast_result(first, elapsed: float, method: str, solver: str, **extra) -> SearchResult:
    """A fast path's plan (knapsack or block configurations), proven within the gap without a
    MILP of the whole model."""
    sol, gap = first
    stats = {
        "solver": solver,
        "method": method,
        "build_time_s": 0.0,
        "solve_time_s": elapsed,
        "mip_gap": gap,
        **extra,
        "n_solutions": 1,
        "solution_gaps": [gap],
    }
    message = "knapsack bound" if method == "knapsack" else method
    return SearchResult(SearchStatus.OPTIMAL, message, (sol,), stats)


def _largest_loss(ks) -> float:
    """The loss of the worst plan (every group at its most lossy allowed option)."""
    return float(np.where(np.isfinite(ks.loss), ks.loss, -np.inf).max(1).sum())


def _bound_of(b: MilpBuilder, model: Model, ks, quick, scale: float) -> LpBound:
    """The knapsack's Lagrangian bound and reduced costs on the model's x and y columns (in
    its shifted, scaled objective), for reduced-cost fixing without the LP."""
    p = b.p
    nw, na, n_w = len(p.w_bits), len(p.a_bits), ks.n_weight
    lower = np.zeros(model.n)
    lower[b.x0 : b.y0] = (quick.reduced[:n_w, :nw] * scale).reshape(-1)
    lower[b.y0 : b.y0 + len(p.act_groups) * na] = (quick.reduced[n_w:, :na] * scale).reshape(-1)
    shift = float(np.where(np.isfinite(ks.loss), ks.loss, np.inf).min(1).sum())
    fun = max((quick.bound - shift) * scale, 0.0)
    return LpBound(np.zeros(model.n), fun, lower, np.zeros(model.n))


def _infeasible_message(problem: SearchProblem) -> str:
    """Name the budgets that cannot be met even alone, with the smallest reachable value."""
    parts = []
    for r in problem.resources:
        if r.budget is None:
            continue
        low, _ = resource_range(problem, r.name)
        if low > r.budget - r.slack:
            parts.append(
                f"{r.name} budget {r.budget:.6g} {r.unit} is below the smallest reachable {low:.6g} {r.unit}"
            )
    if not parts:
        parts.append("the budgets can each be met alone but not together: relax one of them")
    return "; ".join(parts)
