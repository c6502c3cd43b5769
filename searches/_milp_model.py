"""The MILP model of a :class:`~searches.problem.SearchProblem`: variable layout, sparse rows,
objective scaling and decoding (the formulation is described in :mod:`searches.ilp`)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint
from scipy.sparse import coo_matrix

from searches.problem import SearchProblem

__all__ = ["MilpBuilder"]

_OBJECTIVE_RANGE = 1e3
# Overhead indicators are linked to every group (z >= x[g, class]: the tight rows that make the
# LP bound close to the optimum) unless that takes more rows than this; then one aggregated row
# per class (same integer solutions, weaker LP). ResNet-50 per channel would need 55k rows; in
# tiles of 8 channels, 6.9k, which cut the T4 solve from 34 s to 20 s.
_STRONG_LINK_ROWS = 20_000


class MilpBuilder:
    """Variable layout and sparse rows of the MILP."""

    def __init__(self, problem: SearchProblem, active: list, *, counts: bool = True,
                 tight: bool = True) -> None:  # fmt: skip
        """``active``: the resources that enter the model (budgeted, or being ranged);
        ``counts``: use integer option counts for layers of interchangeable groups; ``tight``:
        add the valid rows that bound each layer's units per activation option (see
        :meth:`unit_range`; without them the model is the plain one-hot formulation)."""
        p = problem
        self.p = p
        self.use_counts = counts
        self.tight = tight
        self.cut_rows: list[int] = []  # valid rows that only tighten the LP (see unit_range)
        nw, na = len(p.w_bits), len(p.a_bits)
        self.nw, self.na = nw, na
        self.x0 = 0
        self.y0 = len(p.weight_groups) * nw
        n = self.y0 + len(p.act_groups) * na
        self.groups_by_layer: dict[str, list[int]] = {}
        for k, g in enumerate(p.weight_groups):
            self.groups_by_layer.setdefault(g.layer, []).append(k)
        # Interchangeable groups: integer counts m[l, i] of groups at option i, x continuous.
        # ``alike`` names such layers whichever formulation is used: plans that differ only in
        # which of their groups take which option are one plan to the no-good cuts.
        self.alike = [
            name
            for name in sorted(self.groups_by_layer, key=self._order)
            if self._interchangeable(name, active)
        ]
        self.m0: dict[str, int] = {}
        for name in self.alike if counts else ():
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
        return self.p.layer_index[name]

    def _interchangeable(self, name: str, active: list) -> bool:
        """Groups of a layer differ only in loss: equal channel counts, allowed options and
        weight costs. Then every cost depends only on how many groups take each option, and for
        integer counts the assignment of groups to options is a transportation problem whose LP
        vertices are integral -- so the x of these groups need not be integer variables."""
        groups = self.groups_by_layer[name]
        if len(groups) < 2:
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

    def unit_range(self, key: tuple) -> tuple[int, int]:
        """Least and most count units a layer has over all its classes: its channels when it
        counts channels; in tiles of q, ceil(C / q) up to one partial tile more per extra class
        (ceil(a) + ceil(b) <= ceil(a + b) + 1)."""
        q, n = key[1], self.channels(key[0])
        if q == 1:
            return n, n
        least = -(-n // q)
        return least, min(least + self.n_classes(key) - 1, self.n_classes(key) * self.cap(key))

    def _unit_range_rows(self, key: tuple, u0: int, a: int) -> None:
        lo, hi = self.unit_range(key)
        nc = self.n_classes(key)
        for j in range(self.na):
            cols = [u0 + c * self.na + j for c in range(nc)] + [self.yi(a, j)]
            self.cut_rows += [len(self.rows), len(self.rows) + 1]
            self.add(cols, [1.0] * nc + [-float(lo)], 0.0, np.inf)
            self.add(cols, [1.0] * nc + [-float(hi)], -np.inf, 0.0)

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
            a = p.act_index[p.act_group_of[key[0]]]
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
            # The layer's units at activation option j, over all classes, are its whole count
            # when j is chosen and 0 otherwise: lo * y <= sum_c u[c, j] <= hi * y. Valid for
            # every plan, and far tighter in the LP than the per-class caps alone (ResNet-50 on
            # BitFusion: LP bound 4 % below the optimum with the caps only). With them HiGHS's
            # MILP presolve (scipy 1.17) returned a worse plan, or "infeasible", on about 1 in
            # 700 random test problems that it solves exactly without them or without presolve:
            # ``cut_rows`` names them, and a MILP that has them runs without presolve.
            if self.tight:
                self._unit_range_rows(key, u0, a)
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

    def no_good_cut(self, w: np.ndarray, a: np.ndarray, n: int):
        """Rows and new binary columns that exclude the plan ``(w, a)`` from a model of ``n``
        columns: (number of new columns, rows, lo, hi).

        A plan differs from it in the option of a group outside ``alike`` layers, in an
        activation option, or in the count ``m[l, i]`` of groups of an alike layer at some
        option: binary ``d[l, i]`` with ``m[l, i] <= C_l - (C_l - m*[l, i] + 1) d[l, i]``
        forces ``m[l, i] <= m*[l, i] - 1``, and ``sum (1 - x[g, w_g]) + sum (1 - y[a, a_a]) +
        sum d >= 1`` asks for at least one difference."""
        p = self.p
        alike = set(self.alike)
        cols = [
            self.xi(g, int(i)) for g, i in enumerate(w) if p.weight_groups[g].layer not in alike
        ]
        cols += [self.yi(k, int(j)) for k, j in enumerate(a)]
        r_idx, c_idx, vals, lo, hi = [], [], [], [], []
        d_cols = []
        for name in self.alike:
            groups = self.groups_by_layer[name]
            counts = np.bincount(w[groups], minlength=self.nw)
            for i in np.nonzero(counts)[0]:
                d = n + len(d_cols)
                d_cols.append(d)
                if name in self.m0:  # groups at option i: the count, or the sum of x
                    mcols = [self.m0[name] + int(i)]
                else:
                    mcols = [self.xi(k, int(i)) for k in groups]
                row = len(lo)
                cap = len(groups)
                r_idx += [row] * (len(mcols) + 1)
                c_idx += list(mcols) + [d]
                vals += [1.0] * len(mcols) + [float(cap - counts[i] + 1)]
                lo.append(-np.inf)
                hi.append(float(cap))
        row = len(lo)  # -sum x[g, w_g] - sum y + sum d >= 1 - len(cols)
        r_idx += [row] * (len(cols) + len(d_cols))
        c_idx += cols + d_cols
        vals += [-1.0] * len(cols) + [1.0] * len(d_cols)
        lo.append(1.0 - len(cols))
        hi.append(np.inf)
        rows = coo_matrix((vals, (r_idx, c_idx)), shape=(len(lo), n + len(d_cols))).tocsr()
        return len(d_cols), rows, np.array(lo), np.array(hi)

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
