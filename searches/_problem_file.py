"""The ``.npz`` file of a :class:`SearchProblem`: arrays as arrays, everything else in one JSON
header, no pickles (a problem file from elsewhere never runs code)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from hawq_search.core.atomic import atomic_file
from searches.problem import PROBLEM_FORMAT_VERSION, Resource, SearchProblem, WeightGroup

__all__ = ["write_problem", "read_problem", "problem_fingerprint"]

_PER_LAYER = ("pair", "overhead", "round_up")


def write_problem(problem: SearchProblem, path: Path) -> None:
    arrays = _arrays(problem)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, **arrays)


def problem_fingerprint(problem: SearchProblem) -> str:
    """SHA-256 of everything that defines the problem (losses, costs, budgets, allowed options;
    not ``meta``): two processes agree on a problem exactly when their fingerprints do."""
    arrays = _arrays(problem, with_meta=False)
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _arrays(problem: SearchProblem, with_meta: bool = True) -> dict[str, np.ndarray]:
    """Every array of the file, the JSON header included as bytes."""
    p = problem
    arrays: dict[str, np.ndarray] = {
        "group_loss": np.array([g.loss for g in p.weight_groups], dtype=float).reshape(
            len(p.weight_groups), len(p.w_bits)
        ),
        "group_layer": np.array([p.layer_index[g.layer] for g in p.weight_groups], dtype=np.int64),
        "group_channels": np.array([g.channels for g in p.weight_groups], dtype=np.int64).reshape(
            -1, 2
        ),
        "act_loss": np.asarray(p.act_loss, dtype=float),
        "w_allowed": np.asarray(p.w_allowed, dtype=bool),
        "a_allowed": np.asarray(p.a_allowed, dtype=bool),
    }
    resources = []
    for i, r in enumerate(p.resources):
        entry = {
            "name": r.name,
            "unit": r.unit,
            "budget": r.budget,
            "constant": r.constant,
            "slack": r.slack,
            "round_reserve": r.round_reserve,
            "quantum": {str(p.layer_index[k]): int(v) for k, v in r.quantum.items()},
            "classes": {str(p.layer_index[k]): list(v) for k, v in r.classes.items()},
        }
        for kind in ("weight", "act"):
            value = getattr(r, kind)
            entry[kind] = value is not None
            if value is not None:
                arrays[f"r{i}.{kind}"] = np.asarray(value, dtype=float)
        for kind in _PER_LAYER:
            layers = getattr(r, kind)
            entry[kind] = [p.layer_index[k] for k in layers]
            for k, v in layers.items():
                arrays[f"r{i}.{kind}.{p.layer_index[k]}"] = np.asarray(v, dtype=float)
        resources.append(entry)
    header = {
        "format": "hawq-search problem",
        "format_version": PROBLEM_FORMAT_VERSION,
        "layer_names": list(p.layer_names),
        "layer_act_groups": list(p.layer_act_groups),
        "w_bits": list(p.w_bits),
        "a_bits": list(p.a_bits),
        "act_groups": list(p.act_groups),
        "resources": resources,
        "meta": p.meta if with_meta else {},
    }
    text = json.dumps(header, default=_plain_number)
    arrays["header"] = np.frombuffer(text.encode(), dtype=np.uint8)
    return arrays


def _plain_number(value):
    """numpy scalars (bits and budgets often are) as JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def read_problem(path: Path) -> SearchProblem:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(bytes(arrays.pop("header")).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a problem file ({type(exc).__name__}: {exc})") from None
    if header.get("format") != "hawq-search problem":
        raise ValueError(f"{path} is not a problem file (no 'hawq-search problem' header)")
    if header.get("format_version") != PROBLEM_FORMAT_VERSION:
        raise ValueError(
            f"{path}: problem format_version {header.get('format_version')!r} is not "
            f"{PROBLEM_FORMAT_VERSION}: write it again with this version"
        )
    try:
        return _build(header, arrays)
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(
            f"{path}: problem file is incomplete ({type(exc).__name__}: {exc})"
        ) from None


def _build(header: dict, arrays: dict[str, np.ndarray]) -> SearchProblem:
    names = header["layer_names"]
    groups = [
        WeightGroup(names[int(li)], (int(ch[0]), int(ch[1])), loss)
        for li, ch, loss in zip(
            arrays["group_layer"], arrays["group_channels"], arrays["group_loss"], strict=True
        )
    ]
    resources = []
    for i, e in enumerate(header["resources"]):
        per_layer = {
            kind: {names[li]: arrays[f"r{i}.{kind}.{li}"] for li in e[kind]} for kind in _PER_LAYER
        }
        resources.append(
            Resource(
                e["name"],
                e["unit"],
                e["budget"],
                weight=arrays.get(f"r{i}.weight") if e["weight"] else None,
                act=arrays.get(f"r{i}.act") if e["act"] else None,
                quantum={names[int(k)]: int(v) for k, v in e["quantum"].items()},
                classes={names[int(k)]: tuple(v) for k, v in e["classes"].items()},
                constant=float(e["constant"]),
                slack=float(e["slack"]),
                round_reserve=e["round_reserve"],
                **per_layer,
            )
        )
    return SearchProblem(
        layer_names=tuple(names),
        layer_act_groups=tuple(header["layer_act_groups"]),
        w_bits=tuple(header["w_bits"]),
        a_bits=tuple(header["a_bits"]),
        weight_groups=groups,
        act_groups=list(header["act_groups"]),
        act_loss=arrays["act_loss"],
        resources=resources,
        w_allowed=arrays["w_allowed"],
        a_allowed=arrays["a_allowed"],
        meta=header.get("meta", {}),
    )
