"""The published JSON Schema of ``plan.json`` and its validation into one-line errors.

The schema ships as package data (``hawq_search/schemas/plan.schema.json``) and is loaded once
with :mod:`importlib.resources`. Validation uses a type checker stricter than draft 2020-12:
``integer`` excludes floats (``4.0``) and booleans, ``number`` excludes booleans, NaN and
infinities (``json.loads`` turns ``1e400`` into ``inf``); ``array`` accepts tuples, so
``Plan.from_dict(plan.to_dict())`` works without a JSON round trip. A failure raises one
:class:`UserInputError` naming the most relevant field, e.g.
``plan file run/plan.json: field layers[3].w_bits[5]: 2.7 is not of type 'integer': ...``.
"""

from __future__ import annotations

import json
import math
import reprlib
from functools import lru_cache
from importlib import resources

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import extend

from hawq_search.core.exceptions import UserInputError

__all__ = ["MAX_DEPTH", "load_plan_schema", "validate_plan_dict", "field_path"]

SCHEMA_RESOURCE = ("hawq_search.schemas", "plan.schema.json")
MAX_DEPTH = 64  # plans nest about 5 levels; anything far deeper is not a plan

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 6, 4, 2


def _is_integer(_checker, x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_array(_checker, x) -> bool:
    return isinstance(x, (list, tuple))  # Plan.to_dict() holds LayerInfo tuples


def _is_number(_checker, x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@lru_cache(maxsize=1)
def load_plan_schema() -> dict:
    """The shipped plan schema (parsed once)."""
    package, name = SCHEMA_RESOURCE
    return json.loads(resources.files(package).joinpath(name).read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    checker = Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"array": _is_array, "integer": _is_integer, "number": _is_number}
    )
    strict = extend(Draft202012Validator, type_checker=checker)
    return strict(load_plan_schema())


def field_path(path) -> str:
    """``("layers", 3, "w_bits", 5)`` -> ``layers[3].w_bits[5]``; empty -> ``(top level)``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out or "(top level)"


def _message(error: ValidationError) -> str:
    """jsonschema's message with the offending value shortened, on one line."""
    msg = error.message
    inst = error.instance
    if error.validator == "type" and isinstance(inst, float) and not math.isfinite(inst):
        return f"{inst!r} is not a finite number"
    try:
        full = repr(error.instance)
        if len(full) > 60:
            msg = msg.replace(full, _short.repr(error.instance))
    except RecursionError:  # pragma: no cover - depth is checked before validation
        pass
    msg = " ".join(msg.split())
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _check_depth(d: object, source: str) -> None:
    """Iteratively reject containers nested deeper than :data:`MAX_DEPTH` (no recursion)."""
    stack = [(d, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise UserInputError(
                f"{source} is nested more than {MAX_DEPTH} levels deep, so it is not a "
                "hawq-search plan: regenerate the plan"
            )
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((child, depth + 1) for child in node)


def validate_plan_dict(d: object, source: str) -> None:
    """Raise one-line :class:`UserInputError` if ``d`` does not follow the plan schema.

    ``source`` starts the message: ``"plan file PATH"`` or ``"plan"``.
    """
    _check_depth(d, source)
    try:
        error = best_match(_validator().iter_errors(d))
    except RecursionError:
        raise UserInputError(f"{source} is nested too deeply: regenerate the plan") from None
    if error is not None:
        raise UserInputError(
            f"{source}: field {field_path(error.absolute_path)}: {_message(error)}: "
            "regenerate the plan or fix that field"
        )
