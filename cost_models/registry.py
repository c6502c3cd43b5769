"""Built-in accelerator profiles by name, or any user profile by path."""

from __future__ import annotations

from pathlib import Path

from cost_models.base import CostModel
from cost_models.profile import load_profile
from hawq_search.core.exceptions import CostModelError

__all__ = ["PROFILE_DIR", "list_accelerators", "load_accelerator", "profile_path"]

PROFILE_DIR = Path(__file__).with_name("profiles")


def list_accelerators() -> list[str]:
    """Names of the built-in profiles (``cost_models/profiles/<name>.yaml``), sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name_or_path: str | Path) -> Path:
    """Resolve a built-in name or a file path to the profile's YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise CostModelError(f"{p}: profile file not found")
        return p
    builtin = PROFILE_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise CostModelError(
        f"unknown accelerator {str(name_or_path)!r}: not a file and not a built-in profile "
        f"(built-in: {', '.join(list_accelerators())})"
    )


def load_accelerator(name_or_path: str | Path, *, batch: int | None = None) -> CostModel:
    """Cost model of a built-in profile name or a profile YAML path; ``batch`` overrides it."""
    return load_profile(profile_path(name_or_path), batch=batch)
