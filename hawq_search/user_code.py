"""Importing the user's own code, named ``package.module:attribute`` on the command line
(model factories, solvers). Only code the user names is imported; any failure is one line."""

from __future__ import annotations

import importlib

from hawq_search.core.exceptions import UserInputError

__all__ = ["import_object"]


def import_object(target: str, what: str, param: str):
    """The attribute ``target`` (``package.module:attribute``) names; ``what`` says what it is
    for in messages (e.g. "user model"), ``param`` the argument that named it."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise UserInputError(
            f"{what} {target!r} must look like package.module:name", params=(param,)
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserInputError(
            f"cannot import {module_name!r} for {what} {target!r} ({exc}): "
            "install it or add its folder to PYTHONPATH",
            params=(param,),
        ) from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing
        raise UserInputError(
            f"importing {module_name!r} for {what} {target!r} failed "
            f"({type(exc).__name__}: {exc}): fix that module",
            params=(param,),
        ) from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise UserInputError(f"{module_name} has no {attr!r}: name the {what}", params=(param,))
    return obj
