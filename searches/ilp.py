"""Exact search: the problem as a mixed-integer linear program solved by HiGHS (scipy.optimize.milp).

Formulation (one-hot, a multiple-choice knapsack with side constraints):

* ``x[g, i]`` in {0, 1}: weight group ``g`` takes weight option ``i``; ``sum_i x[g, i] = 1``.
* ``y[a, j]`` in {0, 1}: activation group ``a`` takes activation option ``j``; ``sum_j y[a, j] = 1``.
* Costs that depend on both the weight bits of a layer's channels and the bits of its input
  activation (BOPs, latency) are linearised exactly with continuous ``u[l, i, j] >= 0``:
  ``sum_j u[l, i, j] = n[l, i]`` (channels of layer ``l`` at option ``i``) and
  ``u[l, i, j] <= C_l * y[a(l), j]``. Since exactly one ``y[a(l), j]`` is 1, ``u[l, i, j]`` equals
  ``n[l, i]`` for that ``j`` and 0 otherwise.
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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import sys
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from searches._base import BaseSearch
from searches._milp_model import MilpBuilder
from searches.problem import SearchProblem
from searches.result import SearchResult, SearchStatus

__all__ = ["IlpSearch", "resource_range"]


@contextlib.contextmanager
def _quiet_stdout():
    """Silence HiGHS's C++ diagnostics (printed on file descriptor 1 even with disp=False)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured stdout: nothing to silence
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


class _LpResult:
    def __init__(self, x, fun, lower_rc, upper_rc) -> None:
        self.x, self.fun, self.lower_rc, self.upper_rc = x, fun, lower_rc, upper_rc


def _lp_with_reduced_costs(c, bounds: Bounds, cons: LinearConstraint, time_limit: float):
    """LP relaxation by HiGHS (scipy.optimize.linprog) with the reduced costs of the bounds,
    which ``milp`` does not report. None if it does not solve to optimality."""
    a = cons.A.tocsr()
    eq = cons.lb == cons.ub
    up = np.isfinite(cons.ub) & ~eq
    down = np.isfinite(cons.lb) & ~eq
    from scipy.optimize import linprog
    from scipy.sparse import vstack

    with _quiet_stdout():
        res = linprog(
            c,
            A_ub=vstack([a[up], -a[down]]).tocsr(),
            b_ub=np.concatenate([cons.ub[up], -cons.lb[down]]),
            A_eq=a[eq],
            b_eq=cons.lb[eq],
            bounds=np.column_stack([bounds.lb, bounds.ub]),
            method="highs",
            options={"time_limit": time_limit},
        )
    if res.status != 0 or res.x is None:
        return None
    return _LpResult(res.x, res.fun, res.lower.marginals, res.upper.marginals)


def _milp(c, integrality, bounds, cons, time_limit: float, gap: float):
    with _quiet_stdout():
        return milp(
            c,
            integrality=integrality,
            bounds=bounds,
            constraints=cons,
            options={"time_limit": time_limit, "mip_rel_gap": gap, "disp": False},
        )


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
        with _quiet_stdout():
            res = milp(sign * c, integrality=integrality, bounds=bounds, constraints=cons)
        if res.x is None:
            out.append(float("nan"))
            continue
        w, a = b.decode(res.x)
        out.append(problem.objective_and_totals(w, a)[1][name])
    return out[0], out[1]


class IlpSearch(BaseSearch):
    """Exact MILP search with HiGHS.

    Args:
        time_limit: seconds before HiGHS returns its best plan so far (status FEASIBLE).
        mip_rel_gap: relative optimality gap at which the plan counts as optimal.
        reduce_above: weight groups x options from which the large-model path runs (integer
            option counts, LP bound, incumbent, reduced-cost fixing; see ``_solve_reduced``).
    """

    name = "ilp-highs"

    def __init__(
        self, *, time_limit: float = 60.0, mip_rel_gap: float = 1e-4, reduce_above: int = 20_000
    ) -> None:
        self.time_limit = time_limit
        self.mip_rel_gap = mip_rel_gap
        self.reduce_above = reduce_above

    def describe(self) -> dict:
        return {
            "search": self.name,
            "time_limit_s": self.time_limit,
            "mip_rel_gap": self.mip_rel_gap,
        }

    def _solve_reduced(self, b: MilpBuilder, c, integrality, bounds, cons):
        """Large problems: LP bound, an incumbent, reduced-cost fixing, then a small exact MILP.

        1. The LP relaxation gives a bound ``LB`` and reduced costs ``d``.
        2. Incumbent ``UB``: the MILP with every weight group the LP assigns integrally fixed
           (layers it leaves undecided stay free). A multiple-choice knapsack's LP optimum has
           few fractional groups, so this MILP is tiny.
        3. A binary at a bound in the LP whose reduced cost exceeds ``UB - LB`` takes that value
           in every plan better than the incumbent (``obj >= LB + |d|`` otherwise), so fixing
           it loses no better plan: the MILP over the rest is exact for the whole problem.

        HiGHS on the full model instead spends most of its time in presolve and heuristics over
        >100k binaries. Returns (None, None) when a step fails (the caller solves in full).
        """
        lp = _lp_with_reduced_costs(c, bounds, cons, self.time_limit / 2)
        if lp is None:
            return None, None
        p = b.p
        x = lp.x[b.x0 : b.y0].reshape(len(p.weight_groups), b.nw)
        settled = x.max(1) > 1 - 1e-9
        # Layers the LP leaves undecided stay wholly free: an unsettled group, or a fractional
        # count, tile, overhead or byte variable (counts layers add no binaries when freed).
        open_layers = {p.weight_groups[k].layer for k in np.nonzero(~settled)[0]}
        frac = np.abs(lp.x - np.round(lp.x)) > 1e-6
        for col, layer in b.aux_columns():
            if integrality[col] and frac[col]:
                open_layers.add(layer)
        for name in open_layers:
            settled[b.groups_by_layer[name]] = False
        lo, hi = bounds.lb.copy(), bounds.ub.copy()
        rows = np.nonzero(settled)[0]
        fixed = np.round(x[rows])
        for k, row in zip(rows, fixed, strict=True):
            lo[b.xi(k, 0) : b.xi(k, 0) + b.nw] = row
            hi[b.xi(k, 0) : b.xi(k, 0) + b.nw] = row
        inc = _milp(c, integrality, Bounds(lo, hi), cons, self.time_limit, self.mip_rel_gap)
        if inc.x is None or inc.status != 0:
            return None, None
        gap = (inc.fun - lp.fun) / max(abs(inc.fun), 1e-9)
        if gap <= self.mip_rel_gap:
            return inc, max(gap, 0.0)
        # Reduced-cost fixing on the x and y blocks (the continuous x of counts layers too: an
        # optimal plan exists at an integral vertex, where x is 0 or 1 like a binary).
        # Plans within the gap tolerance of the incumbent need not be found: fix what cannot
        # beat it by more than that (the incumbent stays the answer if nothing does).
        margin = inc.fun * (1 - self.mip_rel_gap) - lp.fun + 1e-9 * max(1.0, abs(inc.fun))
        lo, hi = bounds.lb.copy(), bounds.ub.copy()
        cols = np.arange(b.x0, b.y0 + len(p.act_groups) * b.na)
        at_lo = (lp.x[cols] < lo[cols] + 1e-9) & (lp.lower_rc[cols] > margin)
        at_hi = (lp.x[cols] > hi[cols] - 1e-9) & (-lp.upper_rc[cols] > margin)
        hi[cols[at_lo]] = lo[cols[at_lo]]
        lo[cols[at_hi]] = hi[cols[at_hi]]
        res = _milp(c, integrality, Bounds(lo, hi), cons, self.time_limit, self.mip_rel_gap)
        if res.status == 2 or (res.x is not None and res.status == 0 and res.fun >= inc.fun):
            return inc, self.mip_rel_gap  # nothing beats the incumbent by more than the gap
        if res.x is None or res.status != 0:
            return None, None
        return res, float(getattr(res, "mip_gap", 0.0) or 0.0)

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
        active = [r for r in problem.resources if r.budget is not None]
        # Large models take the LP-bound path, where counts keep its MILPs small; below that,
        # HiGHS's branch-and-bound is faster on plain binaries (ResNet-50 on BitFusion tiles:
        # 2.4 s vs 3.8 s).
        large = len(problem.weight_groups) * len(problem.w_bits) >= self.reduce_above
        b = MilpBuilder(problem, active, counts=large)
        b.structural_rows()
        c, scale = b.objective()
        extra = []
        for r in active:
            extra.append((b.resource_coefficients(r), r.budget - r.constant - r.slack))
        bounds, integrality = b.bounds_and_integrality()
        cons = b.constraint(extra)
        build_s = time.perf_counter() - t0
        method = "branch-and-bound"
        res = None
        n_binary = int(integrality.sum())
        if large:
            res, lp_gap = self._solve_reduced(b, c * scale, integrality, bounds, cons)
            if res is not None:
                method = "LP bound + reduced MILP"
        if res is None:
            remaining = max(self.time_limit - (time.perf_counter() - t0 - build_s), 1.0)
            res = _milp(c * scale, integrality, bounds, cons, remaining, self.mip_rel_gap)
            lp_gap = None
        solve_s = time.perf_counter() - t0 - build_s
        gap = lp_gap if lp_gap is not None else float(getattr(res, "mip_gap", np.nan) or 0.0)
        stats = {
            "solver": "scipy.optimize.milp (HiGHS)",
            "method": method,
            "build_time_s": build_s,
            "solve_time_s": solve_s,
            "mip_gap": gap,
            "n_vars": b.n,
            "n_binary": n_binary,
            "n_constraints": len(b.rows) + len(extra),
            "objective_scale": scale,
            "highs_status": int(res.status),
            "highs_message": str(res.message),
        }
        if res.status == 2:
            return SearchResult(SearchStatus.INFEASIBLE, _infeasible_message(problem), stats=stats)
        if res.x is None:
            return SearchResult(SearchStatus.ERROR, f"HiGHS: {res.message}", stats=stats)
        w, a = b.decode(res.x)
        status = SearchStatus.OPTIMAL if res.status == 0 else SearchStatus.FEASIBLE
        return SearchResult(status, str(res.message), (problem.solution(w, a),), stats)


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
