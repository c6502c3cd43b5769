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
* Per-group overheads use indicators ``z[l, i] >= x[g, i]`` for every group ``g`` of ``l``.

The objective (predicted loss increase, values around 1e-9..1e-3) is scaled so that its total
range is about 1e3: HiGHS's absolute tolerances otherwise make it stop at once at a poor point.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

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


_OBJECTIVE_RANGE = 1e3
# Layers with more weight groups than this link their overhead indicators with one aggregated
# row per option instead of one row per group (a ResNet-50 would otherwise add 165k rows).
_STRONG_LINK_GROUPS = 64


class _Builder:
    """Variable layout and sparse rows of the MILP."""

    def __init__(self, problem: SearchProblem, active: list) -> None:
        """``active``: the resources that enter the model (budgeted, or being ranged)."""
        p = problem
        self.p = p
        nw, na = len(p.w_bits), len(p.a_bits)
        self.nw, self.na = nw, na
        self.x0 = 0
        self.y0 = len(p.weight_groups) * nw
        n = self.y0 + len(p.act_groups) * na
        self.groups_by_layer: dict[str, list[int]] = {}
        for k, g in enumerate(p.weight_groups):
            self.groups_by_layer.setdefault(g.layer, []).append(k)
        # Count units of a layer's pair costs per kernel class: channels (quantum 1) or tiles of
        # q channels, t[l, c] = ceil(n[l, c] / q) as an integer variable with q * t >= n.
        keys = {
            (name, r.quantum.get(name, 1), r.classes_of(name, nw))
            for r in active
            for name in r.pair
        }
        self.count_keys = sorted(keys, key=lambda k: (self._order(k[0]), k[1], k[2]))
        self.t0: dict[tuple, int] = {}
        self.u0: dict[tuple, int] = {}
        for key in self.count_keys:
            nc = self.n_classes(key)
            if key[1] > 1:
                self.t0[key] = n
                n += nc
            if na > 1:  # pair costs need the (weight class, activation option) linearisation
                self.u0[key] = n
                n += nc * na
        ovh_keys = {(name, r.classes_of(name, nw)) for r in active for name in r.overhead}
        self.z0: dict[tuple, int] = {}
        for key in sorted(ovh_keys, key=lambda k: (self._order(k[0]), k[1])):
            self.z0[key] = n
            n += self.n_classes(key)
        # Whole units of a rounded-up per-layer sum: integer r[l] with 0 <= r - sum < 1.
        round_keys = {(name, tuple(v)) for r in active for name, v in r.round_up.items()}
        self.r0: dict[tuple, int] = {}
        for key in sorted(round_keys, key=lambda k: (self._order(k[0]), k[1])):
            self.r0[key] = n
            n += 1
        self.n = n
        self.rows: list[tuple[list[int], list[float], float, float]] = []

    def _order(self, name: str) -> int:
        return self.p.layer_by_name[name].index

    @staticmethod
    def n_classes(key: tuple) -> int:
        return max(key[-1]) + 1

    @staticmethod
    def members(key: tuple, c: int) -> list[int]:
        """Weight options of class ``c``."""
        return [i for i, ci in enumerate(key[-1]) if ci == c]

    def xi(self, g: int, i: int) -> int:
        return self.x0 + g * self.nw + i

    def yi(self, a: int, j: int) -> int:
        return self.y0 + a * self.na + j

    def add(self, cols, vals, lo, hi) -> None:
        self.rows.append((list(cols), list(vals), lo, hi))

    def channels(self, name: str) -> int:
        return sum(self.p.weight_groups[k].count for k in self.groups_by_layer[name])

    def cap(self, key: tuple) -> int:
        """Largest number of count units of one class of layer ``key[0]``."""
        return -(-self.channels(key[0]) // key[1])

    def channel_expr(self, name: str, options: list[int]) -> tuple[list[int], list[float]]:
        """Columns and coefficients of the channels of layer ``name`` at any of ``options``."""
        groups = self.groups_by_layer[name]
        cols = [self.xi(k, i) for k in groups for i in options]
        vals = [float(self.p.weight_groups[k].count) for k in groups for _ in options]
        return cols, vals

    def round_expr(self, key: tuple) -> tuple[list[int], list[float]]:
        """The per-layer sum that ``Resource.round_up`` rounds up, over the x columns."""
        groups = self.groups_by_layer[key[0]]
        cols = [self.xi(k, i) for k in groups for i in range(self.nw)]
        vals = [self.p.weight_groups[k].count * key[1][i] for k in groups for i in range(self.nw)]
        return cols, vals

    def count_expr(self, key: tuple, c: int) -> tuple[list[int], list[float]]:
        """Columns and coefficients of the count units of class ``c`` of a layer."""
        if key[1] > 1:
            return [self.t0[key] + c], [1.0]
        return self.channel_expr(key[0], self.members(key, c))

    def structural_rows(self) -> None:
        p = self.p
        for g in range(len(p.weight_groups)):
            self.add([self.xi(g, i) for i in range(self.nw)], [1.0] * self.nw, 1.0, 1.0)
        for a in range(len(p.act_groups)):
            self.add([self.yi(a, j) for j in range(self.na)], [1.0] * self.na, 1.0, 1.0)
        for key, t0 in self.t0.items():
            q = key[1]
            for c in range(self.n_classes(key)):  # n <= q * t <= n + q - 1, i.e. t = ceil(n / q)
                cols, vals = self.channel_expr(key[0], self.members(key, c))
                self.add([t0 + c] + cols, [float(q)] + [-v for v in vals], 0.0, float(q - 1))
        for key, u0 in self.u0.items():
            a = p.act_index[p.layer_by_name[key[0]].act_group]
            cap = float(self.cap(key))
            for c in range(self.n_classes(key)):
                cols, vals = self.count_expr(key, c)
                self.add(
                    [u0 + c * self.na + j for j in range(self.na)] + cols,
                    [1.0] * self.na + [-v for v in vals],
                    0.0,
                    0.0,
                )
                for j in range(self.na):
                    self.add([u0 + c * self.na + j, self.yi(a, j)], [1.0, -cap], -np.inf, 0.0)
        for key, r0 in self.r0.items():
            cols, vals = self.round_expr(key)
            # r - sum <= 1 - 1e-3, not 1 - eps: HiGHS's 1e-7 tolerances; sums of packed bits / 8
            # have fractional parts in multiples of 1/8, so no ceil is cut off.
            self.add([r0] + cols, [1.0] + [-v for v in vals], 0.0, 1.0 - 1e-3)
        for key, z0 in self.z0.items():
            groups = self.groups_by_layer[key[0]]
            for c in range(self.n_classes(key)):
                opts = self.members(key, c)
                if len(groups) <= _STRONG_LINK_GROUPS:
                    for k in groups:  # z >= sum of x over the class: a used class pays its overhead
                        self.add(
                            [self.xi(k, i) for i in opts] + [z0 + c],
                            [1.0] * len(opts) + [-1.0],
                            -np.inf,
                            0.0,
                        )
                else:  # one aggregated row per class: same integer solutions, far fewer rows
                    self.add(
                        [self.xi(k, i) for k in groups for i in opts] + [z0 + c],
                        [1.0] * (len(groups) * len(opts)) + [-float(len(groups))],
                        -np.inf,
                        0.0,
                    )
                # z <= sum of x: an unused class pays none (keeps maxima in resource_range true)
                xs = [self.xi(k, i) for k in groups for i in opts]
                self.add([z0 + c] + xs, [1.0] + [-1.0] * len(xs), -np.inf, 0.0)

    def resource_coefficients(self, r) -> np.ndarray:
        p = self.p
        c = np.zeros(self.n)
        if r.weight is not None:
            c[self.x0 : self.y0] += np.asarray(r.weight, dtype=float).reshape(-1)
        if r.act is not None:
            c[self.y0 : self.y0 + len(p.act_groups) * self.na] += np.asarray(r.act, float).reshape(
                -1
            )
        for name, per_unit in r.pair.items():
            key = (name, r.quantum.get(name, 1), r.classes_of(name, self.nw))
            reps = [self.members(key, c)[0] for c in range(self.n_classes(key))]
            if key in self.u0:
                u0 = self.u0[key]
                c[u0 : u0 + len(reps) * self.na] += per_unit[reps].reshape(-1)
            else:  # a single activation option: the cost is linear in the counts
                for cl, rep in enumerate(reps):
                    cols, vals = self.count_expr(key, cl)
                    np.add.at(c, cols, per_unit[rep, 0] * np.asarray(vals))
        for name, amounts in r.round_up.items():  # + ceil(sum) - sum
            key = (name, tuple(amounts))
            cols, vals = self.round_expr(key)
            c[self.r0[key]] += 1.0
            np.add.at(c, cols, -np.asarray(vals))
        for name, ovh in r.overhead.items():
            key = (name, r.classes_of(name, self.nw))
            reps = [self.members(key, cl)[0] for cl in range(self.n_classes(key))]
            c[self.z0[key] : self.z0[key] + len(reps)] += np.asarray(ovh)[reps]
        return c

    def objective(self) -> tuple[np.ndarray, float]:
        """Objective coefficients, each group's smallest loss subtracted, and their scale.

        Subtracting the per-group minimum (a constant every plan pays) makes HiGHS's relative gap
        measure the loss the search can still remove, not the loss nothing can remove.
        """
        p = self.p
        c = np.zeros(self.n)
        wl = np.array([g.loss for g in p.weight_groups], dtype=float)
        wl = wl - np.where(p.w_allowed, wl, np.inf).min(1, keepdims=True)
        c[self.x0 : self.y0] = wl.reshape(-1)
        spread = float(np.sum(np.where(p.w_allowed, wl, 0.0).max(1)))
        if len(p.act_groups):
            al = np.asarray(p.act_loss, float)
            al = al - np.where(p.a_allowed, al, np.inf).min(1, keepdims=True)
            c[self.y0 : self.y0 + len(p.act_groups) * self.na] = al.reshape(-1)
            spread += float(np.sum(np.where(p.a_allowed, al, 0.0).max(1)))
        scale = _OBJECTIVE_RANGE / spread if spread > 0 else 1.0
        return c, scale

    def bounds_and_integrality(self) -> tuple[Bounds, np.ndarray]:
        p = self.p
        lo, hi = np.zeros(self.n), np.ones(self.n)
        hi[self.x0 : self.y0] = p.w_allowed.reshape(-1).astype(float)
        hi[self.y0 : self.y0 + len(p.act_groups) * self.na] = p.a_allowed.reshape(-1).astype(float)
        integrality = np.ones(self.n)
        for key, t0 in self.t0.items():
            hi[t0 : t0 + self.n_classes(key)] = self.cap(key)
        for key, r0 in self.r0.items():
            hi[r0] = np.ceil(self.channels(key[0]) * max(key[1]) + 1)
        for key, u0 in self.u0.items():
            m = self.n_classes(key) * self.na
            hi[u0 : u0 + m] = self.cap(key)
            integrality[u0 : u0 + m] = 0
        return Bounds(lo, hi), integrality

    def constraint(self, extra: list[tuple[np.ndarray, float]]) -> LinearConstraint:
        r_idx, c_idx, vals, lo, hi = [], [], [], [], []
        for row, (cols, v, low, high) in enumerate(self.rows):
            r_idx += [row] * len(cols)
            c_idx += cols
            vals += v
            lo.append(low)
            hi.append(high)
        base = len(self.rows)
        for k, (coef, limit) in enumerate(extra):
            nz = np.nonzero(coef)[0]
            norm = max(abs(limit), 1e-12)
            r_idx += [base + k] * len(nz)
            c_idx += nz.tolist()
            vals += (coef[nz] / norm).tolist()
            lo.append(-np.inf)
            hi.append(limit / norm)
        a = coo_matrix((vals, (r_idx, c_idx)), shape=(base + len(extra), self.n)).tocsr()
        return LinearConstraint(a, np.array(lo), np.array(hi))

    def decode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        w = x[self.x0 : self.y0].reshape(len(p.weight_groups), self.nw).argmax(1)
        a = x[self.y0 : self.y0 + len(p.act_groups) * self.na].reshape(len(p.act_groups), self.na)
        return w, (a.argmax(1) if len(p.act_groups) else np.zeros(0, dtype=int))


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
    b = _Builder(problem, [r])
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
        out.append(problem.evaluate(w, a)[1][name])
    return out[0], out[1]


class IlpSearch:
    """Exact MILP search with HiGHS.

    Args:
        time_limit: seconds before HiGHS returns its best plan so far (status FEASIBLE).
        mip_rel_gap: relative optimality gap at which the plan counts as optimal.
    """

    name = "ilp-highs"

    def __init__(
        self, *, time_limit: float = 60.0, mip_rel_gap: float = 1e-4, reduce_above: int = 20_000
    ) -> None:
        self.time_limit = time_limit
        self.mip_rel_gap = mip_rel_gap
        self.reduce_above = reduce_above

    def _solve_reduced(self, b: _Builder, c, integrality, bounds, cons):
        """Large problems: solve the LP relaxation, fix the weight groups it already assigns
        integrally, solve the small remaining MILP, and accept the plan only if its objective is
        within ``mip_rel_gap`` of the LP bound -- a bound for the full problem, so the gap is a
        proof, not an estimate. Returns (None, None) when that proof fails.

        A multiple-choice knapsack's LP optimum has few fractional groups (about one per
        budget), so the remaining MILP is tiny while HiGHS on the full model spends most of its
        time in presolve and heuristics over >100k binaries.
        """
        lp = _milp(
            c, np.zeros_like(integrality), bounds, cons, self.time_limit / 2, self.mip_rel_gap
        )
        if lp.status != 0 or lp.x is None:
            return None, None
        p = b.p
        x = lp.x[b.x0 : b.y0].reshape(len(p.weight_groups), b.nw)
        settled = x.max(1) > 1 - 1e-9
        lo, hi = bounds.lb.copy(), bounds.ub.copy()
        rows = np.nonzero(settled)[0]
        fixed = np.round(x[rows])
        for k, row in zip(rows, fixed, strict=True):
            lo[b.xi(k, 0) : b.xi(k, 0) + b.nw] = row
            hi[b.xi(k, 0) : b.xi(k, 0) + b.nw] = row
        res = _milp(c, integrality, Bounds(lo, hi), cons, self.time_limit, self.mip_rel_gap)
        if res.x is None or res.status != 0:
            return None, None
        gap = (res.fun - lp.fun) / max(abs(res.fun), 1e-9)
        if gap > self.mip_rel_gap:
            return None, None
        return res, max(gap, 0.0)

    def solve(self, problem: SearchProblem) -> SearchResult:
        t0 = time.perf_counter()
        active = [r for r in problem.resources if r.budget is not None]
        b = _Builder(problem, active)
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
        if n_binary >= self.reduce_above:
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
        obj, costs = problem.evaluate(w, a)
        status = SearchStatus.OPTIMAL if res.status == 0 else SearchStatus.FEASIBLE
        return SearchResult(status, str(res.message), w, a, obj, costs, stats)


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
