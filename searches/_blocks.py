"""Lagrangian bound for problems whose activation options couple a layer's channels: one
*block* per activation group (its activation option and every weight group of the layers it
feeds), priced exactly for given budget multipliers.

Why: with 4/8-bit activations on an accelerator (ResNet-50 on a T4: 50 activation groups, 3,445
tiles of 8 channels, size + latency + energy budgets), the LP relaxation of the one-hot model
lets an activation group take "half 4-bit, half 8-bit", and its bound sits 1.8 % below the
optimum; the MILP then needs branch-and-bound over the activation groups and took 30 s without
proving a 1e-4 gap. Relaxing only the few budget rows instead keeps every block integral: for
multipliers ``lam >= 0`` a block's best plan is found in closed form (per activation option,
per set of kernel classes a layer uses, every group's cheapest option), and

    ``L(lam) = sum_a min_j V_a(j; lam) - lam . limit``

is a lower bound on every plan within the budgets -- at least the LP bound, since each block
is solved over its integer plans. With one multiplier per budget Kelley's cutting planes
maximise it in a few dozen evaluations. The same pricing gives valid reduced costs (how much
any plan that takes an option must lose above the bound), and :mod:`searches._blocks_core`
uses them to write a small exact core MILP.

A problem qualifies when every budgeted cost is per group, per activation group, per (layer,
kernel class) overhead, or a pair cost whose tiles do not straddle groups (at most one group of
a layer is not a whole number of tiles); per-layer roundings (bytes) do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from searches.problem import SearchProblem

__all__ = ["BlockProblem", "BlockPrices", "block_problem", "block_prices"]

_BIG = 1e30  # a disallowed option's loss in solver units
_MAX_SUBSETS = 64  # kernel-class subsets of one layer enumerated exactly (2 ** 6 options)


@dataclass
class BlockProblem:
    """The problem in solver units: losses less each group's least (total range 1e3), budget
    rows divided by their limits.

    Shapes: ``G`` weight groups, ``A`` activation groups, ``L`` layers, ``K`` budgets, ``nw``
    / ``na`` options, ``S`` kernel-class subsets per layer (padded)."""

    loss: np.ndarray  # (G, nw), _BIG where not allowed
    cost: np.ndarray  # (K, G, nw, na): weight costs plus pair costs of the group's tiles
    act_loss: np.ndarray  # (A, na), _BIG where not allowed
    act_cost: np.ndarray  # (K, A, na)
    limit: np.ndarray  # (K,)
    layer_of: np.ndarray  # (G,) layer index
    block_of_layer: np.ndarray  # (L,) activation-group index
    subset_mask: np.ndarray  # (L, S, nw) options a subset allows
    subset_cost: np.ndarray  # (K, L, S) overheads of the kernel classes it uses; inf = padding
    overheads: list  # per layer: [(class per option, (K, n_classes) cost)] for the core MILP
    shift: float  # the constant taken out of the loss (problem units)
    scale: float  # solver units per problem unit

    @property
    def n_weight(self) -> int:
        return len(self.loss)


def block_problem(problem: SearchProblem) -> BlockProblem | None:
    """The problem as blocks, or None where a budgeted cost is not separable that way."""
    p = problem
    active = [r for r in p.resources if r.budget is not None]
    if not active or any(r.round_up for r in active) or len(p.act_groups) == 0:
        return None
    nw, na = len(p.w_bits), len(p.a_bits)
    n_g, n_a, n_l, k_n = len(p.weight_groups), len(p.act_groups), len(p.layer_names), len(active)
    layer_of = np.array([p.layer_index[g.layer] for g in p.weight_groups], dtype=np.int64)
    block_of_layer = np.array([p.act_index[a] for a in p.layer_act_groups], dtype=np.int64)
    count = np.array([g.count for g in p.weight_groups], dtype=np.int64)
    cost = np.zeros((k_n, n_g, nw, na))
    act_cost = np.zeros((k_n, n_a, na))
    for k, r in enumerate(active):
        if r.weight is not None:
            cost[k] += np.asarray(r.weight, float)[:, :, None]
        if r.act is not None:
            act_cost[k] += np.asarray(r.act, float)
        for layer, per_unit in r.pair.items():
            groups = np.asarray(p.groups_of(layer), dtype=np.int64)
            q = r.quantum.get(layer, 1)
            if np.sum(count[groups] % q != 0) > 1:
                return None  # tiles shared between groups: ceil of a sum is not a sum
            cls = r.classes_of(layer, nw)
            reps = np.array([cls.index(c) for c in cls])
            units = -(-count[groups] // q)
            cost[k, groups] += np.asarray(per_unit, float)[reps][None] * units[:, None, None]
    subsets = _subsets(p, active, nw)
    if subsets is None:
        return None
    masks, costs, overheads = subsets
    width = max(len(m) for m in masks)
    subset_mask = np.zeros((n_l, width, nw), dtype=bool)
    subset_cost = np.full((k_n, n_l, width), np.inf)
    for layer in range(n_l):
        subset_mask[layer, : len(masks[layer])] = masks[layer]
        subset_cost[:, layer, : len(masks[layer])] = np.array(costs[layer]).T
    wl = np.array([g.loss for g in p.weight_groups], dtype=float).reshape(n_g, nw)
    wl = np.where(p.w_allowed, wl, np.inf)
    al = np.where(p.a_allowed, np.asarray(p.act_loss, float), np.inf)
    low_w, low_a = wl.min(1, keepdims=True), al.min(1, keepdims=True)
    spread = float(np.sum(np.where(np.isfinite(wl), wl - low_w, 0.0).max(1)))
    spread += float(np.sum(np.where(np.isfinite(al), al - low_a, 0.0).max(1)))
    scale = 1e3 / spread if spread > 0 else 1.0
    limit = np.array([r.limit for r in active], dtype=float)
    norm = np.array([
        b if b > 0 else max(float(np.abs(cost[k]).max()), float(np.abs(act_cost[k]).max()), 1.0)
        for k, b in enumerate(limit)
    ])  # fmt: skip
    overheads = [[(cls, c / norm[:, None]) for cls, c in items] for items in overheads]
    return BlockProblem(
        loss=np.where(np.isfinite(wl), (wl - low_w) * scale, _BIG),
        cost=np.where(np.isfinite(wl)[None, :, :, None], cost, 0.0) / norm[:, None, None, None],
        act_loss=np.where(np.isfinite(al), (al - low_a) * scale, _BIG),
        act_cost=act_cost / norm[:, None, None],
        limit=limit / norm,
        layer_of=layer_of,
        block_of_layer=block_of_layer,
        subset_mask=subset_mask,
        subset_cost=subset_cost / norm[:, None, None],
        overheads=overheads,
        shift=float(low_w.sum() + low_a.sum()),
        scale=scale,
    )


def _subsets(p: SearchProblem, active: list, nw: int):
    """Per layer: the option masks of every set of kernel classes it can use, their overhead
    costs (K,) each, and the overhead items (class per option, (K, classes) cost); None when a
    layer has more kernel classes than can be enumerated."""
    masks, costs, items_all = [], [], []
    for name in p.layer_names:
        items: dict[tuple, np.ndarray] = {}
        for k, r in enumerate(active):
            if name in r.overhead:
                cls = r.classes_of(name, nw)
                reps = [cls.index(c) for c in range(max(cls) + 1)]
                c = items.setdefault(cls, np.zeros((len(active), len(reps))))
                c[k] += np.asarray(r.overhead[name], float)[reps]
        items_all.append(list(items.items()))
        # Joint class of an option: its class under every overhead's classes.
        joint = [tuple(cls[i] for cls in items) for i in range(nw)]
        kinds = sorted(set(joint))
        if 2 ** len(kinds) > _MAX_SUBSETS:
            return None
        layer_masks, layer_costs = [], []
        for bits in range(1, 2 ** len(kinds)):
            chosen = {kinds[t] for t in range(len(kinds)) if bits >> t & 1}
            mask = np.array([joint[i] in chosen for i in range(nw)])
            total = np.zeros(len(active))
            for cls, c in items.items():
                total += c[:, sorted({cls[i] for i in range(nw) if mask[i]})].sum(1)
            layer_masks.append(mask)
            layer_costs.append(total)
        masks.append(layer_masks)
        costs.append(layer_costs)
    return masks, costs, items_all


@dataclass
class BlockPrices:
    """What one multiplier vector gives: the bound ``value``, a subgradient, the Lagrangian
    plan ``(w, a)``, and the reduced costs of the block decisions: ``rc_act`` (A, na), how much
    more than the bound every plan within the budgets loses when its activation group takes
    option ``j``, and ``rc_subset`` (L, S, na), how much more again when a layer uses the
    kernel classes of subset ``s`` under ``j`` (both additive over blocks and layers)."""

    value: float
    subgradient: np.ndarray
    w: np.ndarray
    a: np.ndarray
    subset: np.ndarray  # (L,) the plan's subset per layer
    subset_best: np.ndarray  # (L, na) each layer's best subset under each activation option
    rc_act: np.ndarray
    rc_subset: np.ndarray


def block_prices(bp: BlockProblem, lam: np.ndarray) -> BlockPrices:
    """Price every block for multipliers ``lam`` (K,)."""
    g_idx = np.arange(bp.n_weight)
    price = bp.loss[:, :, None] + np.tensordot(lam, bp.cost, axes=1)  # (G, nw, na)
    mask = bp.subset_mask[bp.layer_of]  # (G, S, nw)
    masked = np.where(mask[:, :, :, None], price[:, None, :, :], np.inf)  # (G, S, nw, na)
    pick = masked.argmin(2)  # (G, S, na)
    pm = np.take_along_axis(masked, pick[:, :, None, :], 2)[:, :, 0, :]  # (G, S, na)
    n_l, width = bp.subset_mask.shape[:2]
    wl = np.zeros((n_l, width, price.shape[2]))
    np.add.at(wl, bp.layer_of, pm)
    padded = ~np.isfinite(bp.subset_cost[0])
    wl += np.tensordot(lam, np.where(padded[None], 0.0, bp.subset_cost), 1)[:, :, None]
    wl[padded] = np.inf
    s_best = wl.argmin(1)  # (L, na)
    w_best = np.take_along_axis(wl, s_best[:, None, :], 1)[:, 0, :]  # (L, na)
    v = bp.act_loss + np.tensordot(lam, bp.act_cost, axes=1)  # (A, na)
    np.add.at(v, bp.block_of_layer, w_best)
    a = v.argmin(1)
    v_best = v[np.arange(len(v)), a]
    value = float(v_best.sum() - lam @ bp.limit)
    subset = s_best[np.arange(n_l), a[bp.block_of_layer]]
    w = pick[g_idx, subset[bp.layer_of], a[bp.block_of_layer[bp.layer_of]]]
    # The usage the value charges (every class of the subset pays its overhead): a subgradient.
    j_g = a[bp.block_of_layer[bp.layer_of]]
    charged = bp.cost[:, g_idx, w, j_g].sum(1) + bp.act_cost[:, np.arange(len(a)), a].sum(1)
    charged += bp.subset_cost[:, np.arange(n_l), subset].sum(1)
    return BlockPrices(
        value, charged - bp.limit, w, a, subset, s_best, v - v_best[:, None],
        wl - w_best[:, None, :],
    )  # fmt: skip
