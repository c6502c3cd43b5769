"""Exact search over block configurations: the block Lagrangian (:mod:`searches._blocks`)
bounds every *configuration* -- an activation option per activation group and a set of kernel
classes per layer -- and each configuration left is a plain multiple-choice knapsack that
:func:`searches._mckp.solve_scaled` solves within the gap.

Why: a configuration fixes everything that couples a layer's channels (activation bits, tile
prices, kernel overheads), so what is left is separable per weight group, where a Lagrangian
bound with a greedy plan (and a knapsack core MILP when they do not meet) is fast and tight.
The block bound's reduced costs are additive over activation groups and layers, so every plan
of a configuration costs at least ``L + sum of its reduced costs``: only the configurations
whose sum is below the incumbent's loss can hold a better plan, and on ResNet-50 with 4/8-bit
activations those are a handful (near-ties between an activation group's two options, or a
layer's one or two kernels). The bound proven is the least of the solved configurations'
bounds and ``L`` plus the largest reduced cost enumerated.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from searches._blocks import _BIG, BlockProblem, block_prices
from searches._mckp import ScaledKnapsack, kelley, multiplier_box, solve_scaled

__all__ = ["BlockResult", "solve_blocks"]

_MAX_CONFIGS = 400  # configurations solved before the search gives up (the MILP takes over)
_MAX_WIDENINGS = 6  # rounds of a larger reduced-cost window when no configuration has a plan


@dataclass
class BlockResult:
    """Best plan (None if none found), its value and the proven bound (solver units), the
    proven relative ``gap`` (None without a plan), and counters for the stats."""

    w: np.ndarray | None
    a: np.ndarray | None
    value: float
    bound: float
    gap: float | None
    info: dict = field(default_factory=dict)


def solve_blocks(bp: BlockProblem, gap: float, time_limit: float) -> BlockResult:
    """Best plan within ``gap`` (relative, on the loss the search can remove), or the best found
    when the time or the configuration count runs out (``gap`` then says what is proven)."""
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    box = max(multiplier_box(bp.cost), multiplier_box(bp.act_cost))

    def evaluate(lam):
        pr = block_prices(bp, lam)
        return pr.value, pr.subgradient

    bound, lam = kelley(evaluate, len(bp.limit), box, gap)
    prices = block_prices(bp, lam)
    info = {"lagrangian_bound": bound, "dual_s": time.perf_counter() - t0, "configs": 0}
    best_w, best_a, best = None, None, np.inf
    proven = np.inf  # least bound of the configurations solved
    window = max(gap * abs(bound), 1e-6)
    done: set[tuple] = set()
    covered = 0.0  # every configuration of reduced cost below this was solved or pruned
    pruned = np.inf  # least target a configuration was pruned against (its bound is above it)
    for _ in range(_MAX_WIDENINGS + 2):
        # Every configuration not enumerated costs at least bound + limit.
        limit = window if best == np.inf else best * (1 - gap * (1 - 1e-6)) - bound
        configs = _configurations(bp, prices, limit)
        if configs is None:
            info["stopped"] = "too many configurations"
            break
        for delta, a, subset in configs:
            key = (a.tobytes(), subset.tobytes())
            if key in done:
                continue
            target = best * (1 - gap * (1 - 1e-6))  # what a configuration must beat to matter
            if bound + delta >= target:
                pruned = min(pruned, target)
                break  # sorted: every later one is out too
            if time.perf_counter() > deadline or info["configs"] >= _MAX_CONFIGS:
                info["stopped"] = "time" if time.perf_counter() > deadline else "configurations"
                return _result(bp, best_w, best_a, best, min(proven, bound + delta, pruned),
                               gap, info)  # fmt: skip
            done.add(key)
            info["configs"] += 1
            knap, const = _restricted(bp, a, subset)
            w_est = max(best - const, 1e-12) if best < np.inf else None
            leaf_gap = gap if w_est is None else min(gap * best / w_est, 0.5)
            plan, value, leaf_bound, _ = solve_scaled(
                knap, leaf_gap, max(deadline - time.perf_counter(), 0.0), cutoff=target - const
            )
            proven = min(proven, const + leaf_bound)
            if plan is not None and const + value < best:
                best_w, best_a, best = plan, a.copy(), const + value
        covered = limit
        if best < np.inf and limit >= best * (1 - gap) - bound:
            break  # every configuration left out costs at least bound + limit: proven
        if best == np.inf:
            window *= 8.0
    return _result(bp, best_w, best_a, best, min(proven, bound + covered, pruned), gap, info)


def _result(bp, w, a, value, proven, gap, info) -> BlockResult:
    if w is None:
        return BlockResult(None, None, np.inf, proven, None, info)
    proven = min(proven, value)
    g = 0.0 if value - proven <= 1e-9 else (value - proven) / max(value, 1e-300)
    return BlockResult(w, a, value, proven, g, info)


def _restricted(bp: BlockProblem, a: np.ndarray, subset: np.ndarray):
    """The knapsack of one configuration (weight groups only) and its constant loss: options
    outside the layer's kernel classes removed, tile prices at the activation option, the
    activation costs and the subset's overheads taken off the limits."""
    g = np.arange(bp.n_weight)
    j_g = a[bp.block_of_layer[bp.layer_of]]
    cost = np.moveaxis(bp.cost[:, g, :, j_g], 1, 0)  # (K, G, nw)
    allowed = bp.subset_mask[bp.layer_of, subset[bp.layer_of]]  # (G, nw)
    loss = np.where(allowed, bp.loss, _BIG)
    n_l = len(subset)
    limit = (
        bp.limit
        - bp.act_cost[:, np.arange(len(a)), a].sum(1)
        - bp.subset_cost[:, np.arange(n_l), subset].sum(1)
    )
    const = float(bp.act_loss[np.arange(len(a)), a].sum())
    return ScaledKnapsack(loss, np.where(allowed[None], cost, 0.0), limit, 0.0, 1.0), const


def _configurations(bp: BlockProblem, pr, limit: float, cap: int = 4 * _MAX_CONFIGS):
    """Every configuration whose reduced cost is at most ``limit``, cheapest first, as
    (reduced cost, activation options, subset per layer); None if more than ``cap``."""
    layers_of = [np.nonzero(bp.block_of_layer == b)[0] for b in range(len(bp.act_loss))]
    per_block = []  # per activation group: [(delta, j, {layer: subset})], cheapest first
    for b, layers in enumerate(layers_of):
        options = []
        for j in np.nonzero(pr.rc_act[b] <= limit)[0]:
            if bp.act_loss[b, j] >= _BIG:
                continue
            base = float(pr.rc_act[b, j])
            choices = _layer_choices(pr, layers, int(j), limit - base, cap)
            if choices is None:
                return None
            for extra, choice in choices:
                options.append((base + extra, int(j), choice))
                if len(options) > cap:
                    return None
        options.sort(key=lambda o: o[0])
        per_block.append(options)
    # Best-first over the product of the blocks' option lists (each block's first is 0).
    base_a = np.array([opts[0][1] for opts in per_block], dtype=np.int64)
    start = (0.0, tuple(0 for _ in per_block))
    heap, seen, out = [start], {start[1]}, []
    while heap:
        delta, idx = heapq.heappop(heap)
        a = base_a.copy()
        subset = pr.subset.copy()
        for b, k in enumerate(idx):
            _, j, choice = per_block[b][k]
            a[b] = j
            for layer in layers_of[b]:
                subset[layer] = choice.get(int(layer), int(pr.subset_best[layer, j]))
        out.append((delta, a, subset))
        if len(out) > cap:
            return None
        for b, k in enumerate(idx):
            if k + 1 < len(per_block[b]):
                nxt = idx[:b] + (k + 1,) + idx[b + 1 :]
                d = delta - per_block[b][k][0] + per_block[b][k + 1][0]
                if d <= limit and nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (d, nxt))
    return out


def _layer_choices(pr, layers: np.ndarray, j: int, room: float, cap: int):
    """Subsets for the layers of one block under activation option ``j`` whose reduced costs
    add up to at most ``room``: (extra reduced cost, {layer: subset} for layers off their best);
    None if more than ``cap``."""
    out = [(0.0, {})]
    for layer in layers:
        rc = pr.rc_subset[layer, :, j]
        off = np.arange(len(rc)) != pr.subset_best[layer, j]
        alts = [(float(rc[s]), s) for s in np.nonzero(off & (rc <= room))[0]]
        grown = []
        for extra, choice in out:
            for r, s in alts:
                if extra + r <= room:
                    grown.append((extra + r, {**choice, int(layer): int(s)}))
        out += grown
        if len(out) > cap:
            return None
    return out
