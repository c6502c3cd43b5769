"""Exact MILP solving by reduced-cost fixing around the LP bound (the ``core`` method of
:class:`~searches.ilp.IlpSearch`), and plain HiGHS branch-and-bound for comparison.

Why not HiGHS alone: on a multiple-choice knapsack with thousands of groups, HiGHS's
branch-and-bound spends its time on the whole model (presolve, heuristics and node LPs over every
group) while only a handful of groups can still change. The time to prove a 1e-4 gap then jumps
from 0.5 s to over 60 s between budgets a few bytes apart.

Algorithm (exact within the requested relative gap; objective ``f = c x`` >= 0):

1. LP relaxation: bound ``LB`` and reduced costs ``d``. By LP duality every plan satisfies
   ``f(x) >= LB + sum_j |d_j| |x_j - b_j|`` over the columns at a bound ``b_j`` in the LP.
2. At integer points every column of the model moves by at least 1 when it leaves its bound (the
   continuous assignment columns of counts layers can be taken at integral vertices), so every
   plan with ``f <= LB + delta`` keeps each column with ``|d_j| > delta`` at its bound. The
   *core* MILP with those columns fixed (and removed) contains all of them; it is small because
   a multiple-choice knapsack's LP optimum leaves few alternatives of small reduced cost.
3. The core optimum ``f*`` is within the gap for the whole problem once
   ``LB + delta >= f* (1 - gap)``: every plan outside the core costs more. Otherwise ``delta``
   grows to ``f* (1 - gap) - LB`` and the larger core is solved again (no objective cutoff
   row: it slows HiGHS down, ResNet-50 on a T4 reached a 5e-3 gap in 40 s without, 2e-2 with);
   an empty core multiplies ``delta`` by 10. The proven bound is ``min(core bound, LB +
   delta)``. The first cores are capped at a few thousand free alternatives: on large models
   they act as a primal heuristic whose plan the bound alone proves.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

__all__ = [
    "LpBound",
    "Model",
    "Outcome",
    "quiet_stdout",
    "solve_core",
    "solve_from_bound",
    "solve_plain",
]

_MAX_ROUNDS = 6
_CORE_COLUMNS = 3000  # alternatives in the first core (x4 per round)
_ROW_TOL = 1e-9  # rows are normalised (budgets by their limit): a dropped row's slack
_RC_TOL = 1e-7  # HiGHS's dual feasibility tolerance: reduced costs are this accurate


@contextlib.contextmanager
def quiet_stdout():
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


@dataclass
class Model:
    """A MILP ``min c x`` s.t. ``row_lo <= A x <= row_hi``, ``lb <= x <= ub``, some integer."""

    c: np.ndarray
    a: sparse.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integrality: np.ndarray
    cuts: np.ndarray | None = None  # valid rows that only tighten the LP (no presolve with them)

    @classmethod
    def of(cls, c, bounds: Bounds, integrality, cons: LinearConstraint, cut_rows=()) -> Model:
        cuts = np.zeros(cons.A.shape[0], dtype=bool)
        cuts[list(cut_rows)] = True
        return cls(
            np.asarray(c, float), sparse.csr_matrix(cons.A), np.asarray(cons.lb, float),
            np.asarray(cons.ub, float), np.asarray(bounds.lb, float),
            np.asarray(bounds.ub, float), np.asarray(integrality, float), cuts,
        )  # fmt: skip

    def without_cuts(self) -> Model:
        """The plain model (cut rows dropped): what solve_plain hands to HiGHS with presolve."""
        if self.cuts is None or not self.cuts.any():
            return self
        keep = ~self.cuts
        return Model(self.c, self.a[keep], self.row_lo[keep], self.row_hi[keep], self.lb,
                     self.ub, self.integrality)  # fmt: skip

    @property
    def n(self) -> int:
        return len(self.c)

    def extended(self, n_new: int, rows: sparse.spmatrix, lo, hi) -> Model:
        """This model with ``n_new`` binary columns of zero cost and the rows ``lo <= rows x <=
        hi`` (over old and new columns): how no-good cuts enter."""
        a = sparse.hstack([self.a, sparse.csr_matrix((self.a.shape[0], n_new))])
        cuts = None if self.cuts is None else np.concatenate([self.cuts, np.zeros(len(lo), bool)])
        return Model(
            np.concatenate([self.c, np.zeros(n_new)]),
            sparse.vstack([a, sparse.csr_matrix(rows)]).tocsr(),
            np.concatenate([self.row_lo, lo]), np.concatenate([self.row_hi, hi]),
            np.concatenate([self.lb, np.zeros(n_new)]), np.concatenate([self.ub, np.ones(n_new)]),
            np.concatenate([self.integrality, np.ones(n_new)]), cuts,
        )  # fmt: skip


@dataclass
class Outcome:
    """What a solve proved: ``status`` optimal (within the gap), feasible (time limit),
    infeasible or error; the plan ``x``, its objective ``fun`` and a proven lower ``bound``."""

    status: str
    x: np.ndarray | None = None
    fun: float = np.inf
    bound: float = -np.inf
    message: str = ""
    info: dict = field(default_factory=dict)
    proven_gap: float | None = None  # set when the plan was proven by other means

    @property
    def gap(self) -> float | None:
        if self.proven_gap is not None or self.x is None:
            return self.proven_gap
        return _rel_gap(self.fun, self.bound)


def _rel_gap(fun: float, bound: float) -> float:
    """Relative gap as HiGHS measures it, 0 when the bound is within its absolute tolerance."""
    if fun - bound <= 1e-6:
        return 0.0
    return (fun - bound) / max(abs(fun), 1e-300)


@dataclass
class LpBound:
    """A lower bound ``fun`` with reduced costs valid for it: ``c x >= fun + sum lower_rc (x -
    lb) - sum upper_rc (ub - x)`` for every plan (an LP optimum, or a Lagrangian bound)."""

    x: np.ndarray
    fun: float
    lower_rc: np.ndarray
    upper_rc: np.ndarray

    def padded(self, n: int) -> LpBound:
        """The bound on a model with columns appended (no-good cuts): those stay free."""
        extra = np.zeros(n - len(self.x))
        x, lower, upper = (
            np.concatenate([v, extra]) for v in (self.x, self.lower_rc, self.upper_rc)
        )
        return LpBound(x, self.fun, lower, upper)


def lp_relaxation(m: Model, time_limit: float) -> LpBound | str:
    """LP optimum with the reduced costs of the bounds (which ``milp`` does not report), or
    ``"infeasible"`` / ``"failed"``."""
    eq = m.row_lo == m.row_hi
    up = np.isfinite(m.row_hi) & ~eq
    down = np.isfinite(m.row_lo) & ~eq
    with quiet_stdout():
        res = linprog(
            m.c,
            A_ub=sparse.vstack([m.a[up], -m.a[down]]).tocsr(),
            b_ub=np.concatenate([m.row_hi[up], -m.row_lo[down]]),
            A_eq=m.a[eq],
            b_eq=m.row_lo[eq],
            bounds=np.column_stack([m.lb, m.ub]),
            method="highs-ds",
            options={"time_limit": max(time_limit, 0.1)},
        )
    if res.status == 2:
        return "infeasible"
    if res.status != 0 or res.x is None:
        return "failed"
    return LpBound(res.x, float(res.fun), res.lower.marginals, res.upper.marginals)


def _milp_restricted(m: Model, lo, hi, time_limit: float, gap: float):
    """The MILP with columns whose bounds ``lo == hi`` removed (moved into the row bounds):
    (status, full x, objective, dual bound). Presolve on a model a hundredth the size is what
    makes the core solve fast. With cut rows, HiGHS gets them but no presolve: its presolve
    returned wrong plans on such models (see ``MilpBuilder.cut_rows``), and dropping the rows
    made cores up to 3x slower to prove."""
    presolve = m.cuts is None or not m.cuts.any()
    fixed_up = _fix_singletons(m, lo, hi)
    if fixed_up is None:
        return "infeasible", None, np.inf, np.inf
    lo, hi = fixed_up
    free = np.nonzero(lo < hi)[0]
    fixed = np.nonzero(lo >= hi)[0]
    offset = float(m.c[fixed] @ lo[fixed])
    shift = m.a[:, fixed] @ lo[fixed]
    r_lo, r_hi = m.row_lo - shift, m.row_hi - shift
    sub = m.a[:, free].tocsr()
    empty = np.diff(sub.indptr) == 0
    size = np.maximum(np.where(np.isfinite(m.row_lo), np.abs(m.row_lo), 0.0),
                      np.where(np.isfinite(m.row_hi), np.abs(m.row_hi), 0.0))  # fmt: skip
    tol = _ROW_TOL * np.maximum(1.0, size)
    if np.any(empty & ((r_lo > tol) | (r_hi < -tol))):
        return "infeasible", None, np.inf, np.inf
    rows = np.nonzero(~empty)[0]
    a, r_lo, r_hi = sub[rows], r_lo[rows], r_hi[rows]
    c = m.c[free]
    x = lo.astype(float).copy()
    if len(free) == 0:
        return "optimal", x, offset, offset
    # The fixed columns' objective enters as one column fixed at 1: HiGHS then measures its
    # relative gap on the whole objective, not on the small part the core can still change.
    a = sparse.hstack([a, sparse.csr_matrix((a.shape[0], 1))]).tocsr()
    with quiet_stdout():
        res = milp(
            np.append(c, offset), integrality=np.append(m.integrality[free], 0),
            bounds=Bounds(np.append(lo[free], 1.0), np.append(hi[free], 1.0)),
            constraints=LinearConstraint(a, r_lo, r_hi),
            options={"time_limit": max(time_limit, 0.1), "mip_rel_gap": gap, "disp": False,
                     "presolve": presolve},
        )  # fmt: skip
    if res.status == 2:
        return "infeasible", None, np.inf, np.inf
    if res.x is None:
        return ("time" if res.status == 1 else "error"), None, np.inf, -np.inf
    x[free] = res.x[:-1]
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(res.fun) if bound is None or not np.isfinite(bound) else float(bound)
    status = "optimal" if res.status == 0 else "time"
    return status, x, float(res.fun), bound


def _fix_by_reduced_costs(
    m: Model, lp: LpBound, delta: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Bounds with every column whose reduced cost exceeds ``delta`` fixed at its LP bound;
    also how many columns that fixed."""
    lo, hi = m.lb.copy(), m.ub.copy()
    at_lo = (lp.x <= m.lb + 1e-9) & (lp.lower_rc > delta + _RC_TOL) & (m.lb < m.ub)
    at_hi = (lp.x >= m.ub - 1e-9) & (-lp.upper_rc > delta + _RC_TOL) & (m.lb < m.ub) & ~at_lo
    hi[at_lo] = m.lb[at_lo]
    lo[at_hi] = m.ub[at_hi]
    return lo, hi, int(at_lo.sum() + at_hi.sum())


def _integral(m: Model, x: np.ndarray) -> bool:
    ints = m.integrality > 0
    return bool(np.all(np.abs(x[ints] - np.round(x[ints])) <= 1e-7))


def solve_core(m: Model, gap: float, time_limit: float) -> Outcome:
    """Exact within ``gap``: LP bound, reduced-cost fixing, core MILPs (see the module doc)."""
    t0 = time.perf_counter()
    lp = lp_relaxation(m, time_limit)
    if lp == "infeasible":
        return Outcome("infeasible", message="the LP relaxation is infeasible")
    if lp == "failed":
        return solve_plain(m, gap, time_limit - (time.perf_counter() - t0))
    info = {"lp_bound": lp.fun, "lp_s": time.perf_counter() - t0, "core_columns": []}
    if _integral(m, lp.x):
        x = lp.x.copy()
        ints = m.integrality > 0
        x[ints] = np.round(x[ints])
        return Outcome("optimal", x, float(m.c @ x), lp.fun, "LP optimum is integral", info)
    return _core_rounds(m, lp, gap, t0 + time_limit, info)


def solve_from_bound(m: Model, lp: LpBound, gap: float, time_limit: float) -> Outcome:
    """The core rounds from a bound computed elsewhere (the knapsack's Lagrangian bound)."""
    info = {"lp_bound": lp.fun, "lp_s": 0.0, "core_columns": []}
    return _core_rounds(m, lp, gap, time.perf_counter() + time_limit, info)


def _core_rounds(m: Model, lp: LpBound, gap: float, deadline: float, info: dict) -> Outcome:
    best: Outcome | None = None
    delta = max(gap * lp.fun / max(1.0 - gap, 1e-12), 1e-6)
    for rnd in range(_MAX_ROUNDS):
        # A core of at most _CORE_COLUMNS * 4**rnd alternatives: on large models it serves as a
        # primal heuristic whose plan the bound itself proves; the last round is the whole model.
        use = delta if rnd < _MAX_ROUNDS - 1 else np.inf
        use = min(use, _delta_cap(m, lp, _CORE_COLUMNS * 4**rnd))
        lo, hi, n_fixed = _fix_by_reduced_costs(m, lp, use)
        outside = lp.fun + use if n_fixed else np.inf  # every plan outside the core costs more
        info["core_columns"].append(int(np.sum(lo < hi)))
        left = deadline - time.perf_counter()
        status, x, fun, bound = _milp_restricted(m, lo, hi, left, gap)
        info["rounds"] = rnd + 1
        if status in ("time", "error") and x is None:
            return _stopped(best, status, info)
        if x is not None and (best is None or fun < best.fun):
            best = Outcome("optimal", x, fun, -np.inf, "", info)
        region = bound if x is not None else np.inf  # infeasible core: no plan in it
        proven = min(region, outside)
        if best is not None:
            best.bound = max(best.bound, min(proven, best.fun))
            if status == "time":
                best.status, best.message = "feasible", "time limit in the core MILP"
                return best
            if _rel_gap(best.fun, best.bound) <= gap * (1 + 1e-9) or outside == np.inf:
                best.message = f"core MILP, {rnd + 1} round(s)"
                return best
            delta = max(best.fun * (1 - gap * (1 - 1e-6)) - lp.fun, delta)  # proves < gap
        elif outside == np.inf:
            return Outcome("infeasible", message="no plan meets the budgets", info=info)
        else:
            delta *= 10
    return _stopped(best, "error", info)


def _delta_cap(m: Model, lp: LpBound, n_columns: int) -> float:
    """The reduced cost below which ``n_columns`` columns at a bound stay free (inf if fewer)."""
    movable = m.lb < m.ub
    rc = np.concatenate([
        lp.lower_rc[movable & (lp.x <= m.lb + 1e-9)],
        -lp.upper_rc[movable & (lp.x >= m.ub - 1e-9)],
    ])  # fmt: skip
    rc = rc[rc > _RC_TOL]
    if len(rc) <= n_columns:
        return np.inf
    return float(np.partition(rc, n_columns)[n_columns]) - 2 * _RC_TOL


def _fix_singletons(m: Model, lo: np.ndarray, hi: np.ndarray):
    """Fix the one free column of every equality row that has one (a group whose other options
    are fixed at 0): the core model then loses those rows and columns before HiGHS sees it.
    None if a value falls outside its bounds or is fractional for an integer column."""
    lo, hi = lo.copy(), hi.copy()
    eq = m.row_lo == m.row_hi
    for _ in range(3):
        free = lo < hi
        shift = m.a @ np.where(free, 0.0, lo)
        sub = m.a[:, free].tocsr()
        rows = np.nonzero(eq & (np.diff(sub.indptr) == 1))[0]
        if not len(rows):
            break
        cols = np.nonzero(free)[0][sub.indices[sub.indptr[rows]]]
        vals = (m.row_lo[rows] - shift[rows]) / sub.data[sub.indptr[rows]]
        ints = m.integrality[cols] > 0
        vals[ints] = np.where(np.abs(vals[ints] - np.round(vals[ints])) <= 1e-9,
                              np.round(vals[ints]), np.nan)  # fmt: skip
        if np.any(~(vals >= lo[cols] - 1e-9) | ~(vals <= hi[cols] + 1e-9)):
            return None
        lo[cols] = hi[cols] = np.clip(vals, lo[cols], hi[cols])
    return lo, hi


def _stopped(best: Outcome | None, status: str, info: dict) -> Outcome:
    if best is None:
        message = "time limit before a plan was found" if status == "time" else "HiGHS failed"
        return Outcome("error", message=message, info=info)
    best.status, best.message = "feasible", "stopped before the gap was proven"
    return best


def solve_plain(m: Model, gap: float, time_limit: float) -> Outcome:
    """HiGHS's branch-and-bound on the whole model: the reference the core method is timed
    against (and the fallback when the LP fails)."""
    m = m.without_cuts()
    t0 = time.perf_counter()
    with quiet_stdout():
        res = milp(
            m.c, integrality=m.integrality, bounds=Bounds(m.lb, m.ub),
            constraints=LinearConstraint(m.a, m.row_lo, m.row_hi),
            options={"time_limit": max(time_limit, 0.1), "mip_rel_gap": gap, "disp": False},
        )  # fmt: skip
    info = {"highs_status": int(res.status), "highs_s": time.perf_counter() - t0}
    if res.status == 2:
        return Outcome("infeasible", message=str(res.message), info=info)
    if res.x is None:
        return Outcome("error", message=f"HiGHS: {res.message}", info=info)
    bound = getattr(res, "mip_dual_bound", None)
    bound = float(res.fun) if bound is None or not np.isfinite(bound) else float(bound)
    status = "optimal" if res.status == 0 else "feasible"
    return Outcome(status, res.x, float(res.fun), bound, str(res.message), info)
