"""Fast path for problems that are a plain multiple-choice knapsack: a Lagrangian bound and a
greedy plan that together prove the gap without any LP or MILP.

Why: on a ResNet-50 per channel (27,560 groups x 6 options) even the LP relaxation takes
seconds in HiGHS, while the knapsack's Lagrangian dual has one multiplier per budget: for
multipliers ``lam >= 0`` every group picks its option in closed form,
``L(lam) = sum_g min_i (loss[g, i] + lam . cost[:, g, i]) - lam . limit`` is a lower bound on
every plan within the budgets, and its maximum equals the LP bound. With one or two budgets the
LP optimum leaves one or two groups fractional, so rounding it and filling the freed budget
greedily gives a plan within a few groups' loss of the bound: far inside a 1e-4 gap when there
are thousands of groups. When it is not, knapsack core MILPs (:mod:`searches._mckp_core`)
over the options of small reduced cost usually prove it (ResNet-56 per channel, size + BOPs:
core MILPs of a few hundred binaries, where the full model's core did not close in 120 s);
failing that the caller falls back to the exact core MILP of the whole model.

A problem qualifies when every budgeted cost is separable per group: weight costs, activation
costs, and pair costs of layers whose activation group has one allowed option and whose groups
fill whole tiles (at most one partial group per layer). Overheads and integer roundings do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from searches._mckp_core import solve_knapsack_core
from searches.problem import SearchProblem

__all__ = [
    "Knapsack",
    "KnapsackResult",
    "ScaledKnapsack",
    "kelley",
    "multiplier_box",
    "separable_knapsack",
    "solve_knapsack",
    "solve_scaled",
]

_BIG = 1e30
_MAX_DUAL_STEPS = 300
_MAX_MOVES = 5000
_MAX_SWAPS = 50


@dataclass
class Knapsack:
    """``loss`` (n, m), +inf where not allowed; ``cost`` (k, n, m) per budget; ``limit`` (k,).
    Rows ``[0, n_weight)`` are weight groups, the rest activation groups."""

    loss: np.ndarray
    cost: np.ndarray
    limit: np.ndarray
    n_weight: int


def separable_knapsack(problem: SearchProblem) -> Knapsack | None:
    """The problem as a knapsack over weight and activation groups, or None if a budgeted cost
    couples groups (overheads, roundings, pair costs under several activation options)."""
    p = problem
    active = [r for r in p.resources if r.budget is not None]
    if not active or any(r.overhead or r.round_up for r in active):
        return None
    nw, na = len(p.w_bits), len(p.a_bits)
    m = max(nw, na)
    n_w, n_a = len(p.weight_groups), len(p.act_groups)
    loss = np.full((n_w + n_a, m), np.inf)
    wl = np.array([g.loss for g in p.weight_groups], dtype=float).reshape(n_w, nw)
    loss[:n_w, :nw] = np.where(p.w_allowed, wl, np.inf)
    loss[n_w:, :na] = np.where(p.a_allowed, np.asarray(p.act_loss, float), np.inf)
    cost = np.zeros((len(active), n_w + n_a, m))
    for k, r in enumerate(active):
        if r.weight is not None:
            cost[k, :n_w, :nw] += np.asarray(r.weight, float)
        if r.act is not None:
            cost[k, n_w:, :na] += np.asarray(r.act, float)
        for layer, per_unit in r.pair.items():
            if not _add_pair(p, r, layer, per_unit, cost[k]):
                return None
    limit = np.array([r.limit for r in active], dtype=float)
    return Knapsack(loss, np.where(np.isfinite(loss), cost, 0.0), limit, n_w)


def _add_pair(p: SearchProblem, r, layer: str, per_unit: np.ndarray, cost: np.ndarray) -> bool:
    """Add a layer's pair costs to the weight groups' costs if they are separable."""
    a = p.act_index[p.act_group_of[layer]]
    allowed = np.nonzero(p.a_allowed[a])[0]
    if len(allowed) != 1:
        return False
    q = r.quantum.get(layer, 1)
    groups = p.groups_of(layer)
    if sum(p.weight_groups[g].count % q != 0 for g in groups) > 1:
        return False  # tiles shared between groups: ceil of a sum is not a sum
    cls = r.classes_of(layer, len(p.w_bits))
    reps = np.array([cls.index(c) for c in cls])  # the option whose row prices each class
    for g in groups:
        units = -(-p.weight_groups[g].count // q)
        cost[g, : len(p.w_bits)] += per_unit[reps, allowed[0]] * units
    return True


@dataclass
class ScaledKnapsack:
    """The knapsack in solver units: losses less each group's least, total range 1e3; budget
    rows divided by their limits (or by their largest cost when the limit is 0 or negative)."""

    loss: np.ndarray
    cost: np.ndarray
    limit: np.ndarray
    shift: float
    scale: float


def _scaled(ks: Knapsack) -> ScaledKnapsack:
    low = ks.loss.min(1, keepdims=True)
    loss = ks.loss - low
    spread = float(np.sum(np.where(np.isfinite(loss), loss, 0.0).max(1)))
    scale = 1e3 / spread if spread > 0 else 1.0
    norm = np.array(
        [
            b if b > 0 else max(float(np.abs(c).max()), 1.0)
            for b, c in zip(ks.limit, ks.cost, strict=True)
        ]
    )
    return ScaledKnapsack(
        np.where(np.isfinite(loss), loss * scale, _BIG),
        ks.cost / norm[:, None, None], ks.limit / norm, float(low.sum()), scale,
    )  # fmt: skip


def _lagrangian(s: ScaledKnapsack, lam: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """L(lam), a subgradient, and each group's choice (ties to the cheaper option)."""
    price = s.loss + np.tensordot(lam, s.cost, axes=1)
    best = price.min(1, keepdims=True)
    tied = price <= best + 1e-12 * (1.0 + np.abs(best))
    choice = np.where(tied, s.cost.sum(0), np.inf).argmin(1)
    rows = np.arange(len(choice))
    used = s.cost[:, rows, choice].sum(1)
    return float(best.sum() - lam @ s.limit), used - s.limit, choice


def _dual(s: ScaledKnapsack, gap: float) -> tuple[float, np.ndarray]:
    """Maximise L by Kelley's cutting planes in a box (few multipliers: a tiny LP per step)."""
    box = multiplier_box(s.cost)

    def evaluate(lam):
        val, sub, _ = _lagrangian(s, lam)
        return val, sub

    return kelley(evaluate, len(s.limit), box, gap)


def multiplier_box(cost: np.ndarray) -> float:
    """No multiplier above (loss range) / (smallest step between two options' costs) changes a
    choice (``cost``: (k, groups, options...), rows in units of their limits)."""
    flat = cost.reshape(cost.shape[0], cost.shape[1], -1)
    steps = np.diff(np.sort(flat, axis=2), axis=2)
    finest = max(float(steps[steps > 1e-15].min()) if np.any(steps > 1e-15) else 1.0, 1e-12)
    return 2e3 / finest


def kelley(evaluate, k: int, box: float, gap: float) -> tuple[float, np.ndarray]:
    """Maximise a concave Lagrangian ``evaluate(lam) -> (value, subgradient)`` over ``0 <= lam
    <= box`` by Kelley's cutting planes; returns (best value, its multipliers)."""
    lam = np.zeros(k)
    cuts, rhs = [], []
    best = (-np.inf, lam)
    for _ in range(_MAX_DUAL_STEPS):
        val, sub = evaluate(lam)
        if val > best[0]:
            best = (val, lam)
        cuts.append(np.append(-sub, 1.0))  # theta - sub . lam <= val - sub . lam_t
        rhs.append(val - sub @ lam)
        res = linprog(
            np.append(np.zeros(k), -1.0), A_ub=np.array(cuts), b_ub=np.array(rhs),
            bounds=[(0.0, box)] * k + [(None, None)], method="highs",
        )  # fmt: skip
        if res.status != 0:
            break
        if -res.fun - best[0] <= max(0.05 * gap * abs(best[0]), 1e-9):
            break  # within a twentieth of the gap of the dual optimum
        lam = res.x[:k]
    return best


def _greedy(s: ScaledKnapsack, choice: np.ndarray) -> np.ndarray | None:
    """Repair a choice into the budgets (least loss per unit of excess removed), then take the
    single moves that lower the loss most while staying within them."""
    choice = choice.copy()
    rows = np.arange(len(choice))
    tol = 1e-12
    for _ in range(_MAX_MOVES):
        used = s.cost[:, rows, choice].sum(1)
        excess = used - s.limit
        d_loss = s.loss - s.loss[rows, choice][:, None]
        d_cost = s.cost - s.cost[:, rows, choice][:, :, None]
        if np.any(excess > tol):
            over = excess > tol
            gain = (-d_cost[over]).clip(min=0.0).sum(0)  # excess removed
            new = (d_cost[~over] + excess[~over, None, None]).clip(min=0.0).sum(0)
            score = np.where((gain > new + tol) & (s.loss < _BIG), gain - new, 0.0)
            score = score / np.maximum(d_loss, 1e-12)
            if score.max() <= 0:
                return None
        else:
            fits = np.all(d_cost <= -excess[:, None, None] + tol, axis=0)
            score = np.where(fits & (d_loss < -1e-12), -d_loss, 0.0)
            if score.max() <= 0:
                return choice
        g, i = np.unravel_index(int(score.argmax()), score.shape)
        choice[g] = i
    return None


def _swap(s: ScaledKnapsack, lam: np.ndarray, choice: np.ndarray, n_moves: int = 400) -> bool:
    """Apply the best pair of moves (two groups change option) that lowers the loss within the
    budgets, among the moves of least Lagrangian reduced cost; False if none does."""
    rows = np.arange(len(choice))
    price = s.loss + np.tensordot(lam, s.cost, axes=1)
    d_price = price - price[rows, choice][:, None]
    d_price[rows, choice] = np.inf
    d_price[s.loss >= _BIG] = np.inf
    flat = np.argsort(d_price, axis=None)[:n_moves]
    g, i = np.unravel_index(flat, d_price.shape)
    ok = np.isfinite(d_price[g, i])
    g, i = g[ok], i[ok]
    d_loss = s.loss[g, i] - s.loss[g, choice[g]]
    d_cost = s.cost[:, g, i] - s.cost[:, g, choice[g]]  # (k, moves)
    slack = s.limit - s.cost[:, rows, choice].sum(1)
    pair_loss = d_loss[:, None] + d_loss[None, :]
    fits = np.all(d_cost[:, :, None] + d_cost[:, None, :] <= slack[:, None, None] + 1e-12, 0)
    pair_loss = np.where(fits & (g[:, None] != g[None, :]), pair_loss, np.inf)
    if pair_loss.size == 0 or pair_loss.min() >= -1e-12:
        return False
    a, b = np.unravel_index(int(pair_loss.argmin()), pair_loss.shape)
    choice[g[a]], choice[g[b]] = i[a], i[b]
    return True


@dataclass
class KnapsackResult:
    """``plan`` (choice per group) with its proven ``gap`` when the gap is proven, else None;
    always the Lagrangian ``bound`` and the ``reduced`` cost of every (group, option), both in
    problem loss units (the fall-back core MILP fixes options by them)."""

    plan: np.ndarray | None
    gap: float | None
    bound: float
    reduced: np.ndarray


def solve_knapsack(ks: Knapsack, gap: float, core_time: float = 0.0) -> KnapsackResult:
    """Lagrangian bound, greedy plan and pair swaps, then (``core_time`` > 0 seconds) the
    knapsack core MILP when they leave the gap open; the gap is measured on the loss the search
    can remove."""
    s = _scaled(ks)
    plan, value, bound, lam = solve_scaled(s, gap, core_time)
    price = s.loss + np.tensordot(lam, s.cost, axes=1)
    reduced = (price - price.min(1, keepdims=True)) / s.scale
    out = KnapsackResult(None, None, s.shift + max(bound, 0.0) / s.scale, reduced)
    if plan is not None and value - bound <= gap * value + 1e-9:
        out.plan, out.gap = plan, (0.0 if value - bound <= 1e-9 else (value - bound) / value)
    return out


def solve_scaled(s: ScaledKnapsack, gap: float, core_time: float = 0.0, cutoff: float = np.inf):
    """The knapsack in solver units: (plan or None, its value, proven bound, multipliers).
    ``cutoff``: stop after the bound when it reaches this value (no plan of interest is
    cheaper); the plan is then None."""
    bound, lam = _dual(s, gap)
    if bound >= cutoff:
        return None, np.inf, bound, lam
    _, _, choice = _lagrangian(s, lam)
    plan = _greedy(s, choice)
    rows = np.arange(len(choice))
    for _ in range(_MAX_SWAPS if plan is not None else 0):
        value = float(s.loss[rows, plan].sum())
        if value - bound <= gap * value + 1e-9 or not _swap(s, lam, plan):
            break
        plan = _greedy(s, plan)
        if plan is None:
            break
    if plan is None:
        return None, np.inf, bound, lam
    value = float(s.loss[rows, plan].sum())
    if value >= _BIG:
        return None, np.inf, bound, lam
    if value - bound > gap * value + 1e-9 and core_time > 0:
        plan, value, bound = _finish_in_core(s, lam, bound, plan, value, gap, core_time)
    return plan, value, bound, lam


def _finish_in_core(s: ScaledKnapsack, lam, bound: float, plan, value: float, gap: float, t: float):
    """Knapsack core MILPs (:mod:`searches._mckp_core`) of growing reduced-cost threshold: a
    small core whose best plan the threshold already proves is far faster than the core every
    plan better than the greedy one needs. Returns (plan, value, proven bound), the inputs
    unchanged where nothing is proven."""
    price = s.loss + np.tensordot(lam, s.cost, axes=1)
    reduced = price - price.min(1, keepdims=True)
    deadline = time.perf_counter() + t
    rows = np.arange(len(plan))
    step = max(value * gap / 8.0, 1e-12)
    proven = bound
    while True:
        full = value * (1.0 - gap * (1.0 - 1e-6))  # enough to prove the incumbent
        target = min(bound + step, full)
        left = deadline - time.perf_counter()
        if left <= 0:
            return plan, value, proven
        core = solve_knapsack_core(s.loss, s.cost, s.limit, reduced, bound, target, gap, left)
        if core.status not in ("optimal", "time"):
            return plan, value, proven
        if core.plan is not None and core.value < value:
            if not np.all(s.cost[:, rows, core.plan].sum(1) <= s.limit * (1 + 1e-9) + 1e-12):
                return plan, value, proven  # outside the budgets by HiGHS's tolerance
            plan, value = core.plan, core.value
        # Every round's bound holds for every plan (a stopped MILP's dual bound too), so an
        # early small core can prove the plan a later one finds.
        proven = max(proven, min(core.bound, value))
        if value - proven <= gap * value + 1e-9 or target >= full or core.status == "time":
            return plan, value, proven
        step *= 2.0
