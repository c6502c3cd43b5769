"""Reading users' profile and table files strictly: UTF-8 (a BOM is fine), YAML without aliases
or duplicate keys. An alias bomb (a few hundred bytes that expand to gigabytes) or a
self-referencing alias is refused before anything is expanded."""

from __future__ import annotations

from pathlib import Path

import yaml

from hawq_search.core.exceptions import CostModelError

__all__ = ["read_text", "read_yaml"]


def read_text(path: Path, what: str) -> str:
    """The file as text; one clear error for unreadable or non-UTF-8 files."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CostModelError(f"{path}: cannot read {what} ({e.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CostModelError(
            f"{path}: {what} is not UTF-8 text (byte {e.start}): save it as UTF-8"
        ) from None


def read_yaml(path: Path, text: str) -> tuple[object, yaml.Node | None]:
    """Parse ``text``: (data, composed node tree), refusing aliases and duplicate keys."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                line = event.start_mark.line + 1
                raise CostModelError(
                    f"{path}:{line}: YAML anchors and aliases (&name, *name) are not allowed "
                    "in profiles: write the values out"
                )
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_duplicate_keys(path, node)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        msg = str(getattr(e, "problem", None) or e).replace("\n", " ")
        raise CostModelError(f"{path}{line}: invalid YAML: {msg}") from None
    return data, node


def _check_duplicate_keys(path: Path, node: yaml.Node | None) -> None:
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: set = set()
            for k, v in n.value:
                key = getattr(k, "value", None)
                if isinstance(key, str) and key in seen:
                    raise CostModelError(
                        f"{path}:{k.start_mark.line + 1}: duplicate key {key!r}: keep one"
                    )
                seen.add(key)
                stack.append(v)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
