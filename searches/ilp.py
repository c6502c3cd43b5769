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
# Overhead indicators are linked to every group (z >= x[g, class]: the tight rows that make the
# LP bound close to the optimum) unless that takes more rows than this; then one aggregated row
# per class (same integer solutions, weaker LP). ResNet-50 per channel would need 55k rows; in
# tiles of 8 channels, 6.9k, which cut the T4 solve from 34 s to 20 s.
_STRONG_LINK_ROWS = 20_000


class _Builder:
    """Variable layout and sparse rows of the MILP."""

    def __init__(self, problem: SearchProblem, active: list, *, counts: bool = True) -> None:
        """``active``: the resources that enter the model (budgeted, or being ranged);
        ``counts``: use integer option counts for layers of interchangeable groups."""
        p = problem
        self.p = p
        self.use_counts = counts
        nw, na = len(p.w_bits), len(p.a_bits)
        self.nw, self.na = nw, na
        self.x0 = 0
        self.y0 = len(p.weight_groups) * nw
        n = self.y0 + len(p.act_groups) * na
        self.groups_by_layer: dict[str, list[int]] = {}
        for k, g in enumerate(p.weight_groups):
            self.groups_by_layer.setdefault(g.layer, []).append(k)
        # Interchangeable groups: integer counts m[l, i] of groups at option i, x continuous.
        self.m0: dict[str, int] = {}
        for name in sorted(self.groups_by_layer, key=self._order):
            if self._interchangeable(name, active):
                self.m0[name] = n
                n += nw
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

    def aux_columns(self):
        """(column, layer) of every per-layer auxiliary variable (counts, tiles, overheads, bytes)."""
        for name, m0 in self.m0.items():
            for i in range(self.nw):
                yield m0 + i, name
        for table in (self.t0, self.z0):
            for key, start in table.items():
                for c in range(self.n_classes(key)):
                    yield start + c, key[0]
        for key, r0 in self.r0.items():
            yield r0, key[0]

    def _order(self, name: str) -> int:
        return self.p.layer_by_name[name].index

    def _interchangeable(self, name: str, active: list) -> bool:
        """Groups of a layer differ only in loss: equal channel counts, allowed options and
        weight costs. Then every cost depends only on how many groups take each option, and for
        integer counts the assignment of groups to options is a transportation problem whose LP
        vertices are integral -- so the x of these groups need not be integer variables."""
        groups = self.groups_by_layer[name]
        if not self.use_counts or len(groups) < 2:
            return False
        p = self.p
        first = groups[0]
        if any(p.weight_groups[k].count != p.weight_groups[first].count for k in groups):
            return False
        if not np.all(p.w_allowed[groups] == p.w_allowed[first]):
            return False
        for r in active:
            if r.weight is not None and not np.all(np.asarray(r.weight)[groups] == r.weight[first]):
                return False
        return True

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
        if name in self.m0:
            count = float(self.p.weight_groups[groups[0]].count)
            return [self.m0[name] + i for i in options], [count] * len(options)
        cols = [self.xi(k, i) for k in groups for i in options]
        vals = [float(self.p.weight_groups[k].count) for k in groups for _ in options]
        return cols, vals

    def round_expr(self, key: tuple) -> tuple[list[int], list[float]]:
        """The per-layer sum that ``Resource.round_up`` rounds up, over the x columns."""
        cols, counts = self.channel_expr(key[0], list(range(self.nw)))
        if key[0] in self.m0:
            return cols, [n * key[1][i] for i, n in enumerate(counts)]
        return cols, [n * key[1][i % self.nw] for i, n in enumerate(counts)]

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
        for name, m0 in self.m0.items():  # m[l, i] = number of the layer's groups at option i
            groups = self.groups_by_layer[name]
            for i in range(self.nw):
                self.add(
                    [self.xi(k, i) for k in groups] + [m0 + i],
                    [1.0] * len(groups) + [-1.0],
                    0.0,
                    0.0,
                )
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
        strong = (
            sum(len(self.groups_by_layer[k[0]]) * self.n_classes(k) for k in self.z0)
            <= _STRONG_LINK_ROWS
        )
        for key, z0 in self.z0.items():
            groups = self.groups_by_layer[key[0]]
            for c in range(self.n_classes(key)):
                opts = self.members(key, c)
                used_cols, _ = self.channel_expr(key[0], opts)
                used = [1.0] * len(used_cols)  # groups (or group counts m) in the class
                if strong:
                    for k in groups:  # z >= sum of x over the class: a used class pays its overhead
                        self.add(
                            [self.xi(k, i) for i in opts] + [z0 + c],
                            [1.0] * len(opts) + [-1.0],
                            -np.inf,
                            0.0,
                        )
                else:  # one aggregated row per class: same integer solutions, far fewer rows
                    self.add(used_cols + [z0 + c], used + [-float(len(groups))], -np.inf, 0.0)
                # z <= groups in the class: an unused class pays none (keeps maxima true)
                self.add([z0 + c] + used_cols, [1.0] + [-v for v in used], -np.inf, 0.0)

    def resource_coefficients(self, r) -> np.ndarray:
        p = self.p
        c = np.zeros(self.n)
        if r.weight is not None:
            weight = np.asarray(r.weight, dtype=float)
            cw = weight.copy()
            for name, m0 in self.m0.items():  # equal rows: charged once per group on the counts
                groups = self.groups_by_layer[name]
                c[m0 : m0 + self.nw] += weight[groups[0]]
                cw[groups] = 0.0
            c[self.x0 : self.y0] += cw.reshape(-1)
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
        for name, m0 in self.m0.items():
            groups = self.groups_by_layer[name]
            hi[m0 : m0 + self.nw] = len(groups) * p.w_allowed[groups[0]]
            for k in groups:
                integrality[self.xi(k, 0) : self.xi(k, 0) + self.nw] = 0
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
        xw = x[self.x0 : self.y0].reshape(len(p.weight_groups), self.nw)
        w = xw.argmax(1)
        for name, m0 in self.m0.items():
            groups = self.groups_by_layer[name]
            if np.abs(xw[groups] - np.round(xw[groups])).max() > 1e-6:
                w[groups] = self._assign(groups, np.round(x[m0 : m0 + self.nw]).astype(int))
        a = x[self.y0 : self.y0 + len(p.act_groups) * self.na].reshape(len(p.act_groups), self.na)
        return w, (a.argmax(1) if len(p.act_groups) else np.zeros(0, dtype=int))

    def _assign(self, groups: list[int], counts: np.ndarray) -> np.ndarray:
        """A degenerate LP left x fractional: the same counts, groups assigned optimally."""
        loss = np.array([self.p.weight_groups[k].loss for k in groups], dtype=float)
        loss = np.where(self.p.w_allowed[groups], loss, 1e30)
        return _assign_by_counts(loss, counts)


def _assign_by_counts(loss: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Least-loss assignment of groups (rows of ``loss``) to options with given counts."""
    from scipy.optimize import linear_sum_assignment

    slots = np.repeat(np.arange(len(counts)), counts)
    rows, cols = linear_sum_assignment(loss[:, slots])
    out = np.empty(len(loss), dtype=int)
    out[rows] = slots[cols]
    return out


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
    b = _Builder(problem, [r], counts=len(problem.weight_groups) * len(problem.w_bits) >= 20_000)
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

    def _solve_reduced(self, b: _Builder, c, integrality, bounds, cons):
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
        if res.w_choice is not None:  # costs with the exact rounding
            res = dataclasses.replace(res, costs=problem.evaluate(res.w_choice, res.a_choice)[1])
        return res

    def _solve(self, problem: SearchProblem) -> SearchResult:
        t0 = time.perf_counter()
        active = [r for r in problem.resources if r.budget is not None]
        # Large models take the LP-bound path, where counts keep its MILPs small; below that,
        # HiGHS's branch-and-bound is faster on plain binaries (ResNet-50 on BitFusion tiles:
        # 2.4 s vs 3.8 s).
        large = len(problem.weight_groups) * len(problem.w_bits) >= self.reduce_above
        b = _Builder(problem, active, counts=large)
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
