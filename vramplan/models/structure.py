"""Bounds on the shape of parsed JSON/YAML data, checked without recursion before anything walks it."""

from __future__ import annotations

from typing import Any

from vramplan.errors import UsageError

# Deepest nesting accepted in a config.json or training config. Real ones nest under 10 levels (a DeepSpeed block
# inside a TRL config, axolotl's datasets list); 100 stays far below Python's recursion limit (1,000), so reading,
# printing and validating the data never recurses too deep.
MAX_NESTING_DEPTH = 100
# Most lists/mappings and their entries, counting YAML aliases each time they are used: a real config holds a few
# thousand; a million bounds the cost of printing a value (repr expands aliases, e.g. a "billion laughs" file).
MAX_EXPANDED_VALUES = 1_000_000
# Most characters of its strings (keys and values), counting aliases each time they are used: a real config holds a
# few thousand; ten million bounds what a note quoting the value can grow to (an alias of a long string, repeated).
MAX_EXPANDED_CHARACTERS = 10_000_000


def check_structure(data: Any, origin: str) -> None:
    """Raise a one-line UsageError naming `origin` when `data` nests too deep, is too large once YAML aliases are
    expanded, or contains itself (a recursive YAML anchor)."""
    if not isinstance(data, (dict, list)):
        return
    height: dict[int, int] = {}
    size: dict[int, int] = {}
    characters: dict[int, int] = {}
    active: set[int] = set()  # the containers on the path from the root to the one being visited
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _containers(node)
        if finished:
            active.discard(key)
            height[key] = 1 + max((height[id(child)] for child in children), default=0)
            size[key] = 1 + len(node) + sum(size[id(child)] for child in children)
            characters[key] = _own_characters(node) + sum(characters[id(child)] for child in children)
            if height[key] > MAX_NESTING_DEPTH:
                raise UsageError(f"{origin}: nested more than {MAX_NESTING_DEPTH} levels deep; not a config file")
            if size[key] > MAX_EXPANDED_VALUES:
                raise UsageError(f"{origin}: more than {MAX_EXPANDED_VALUES:,} values once YAML aliases are "
                                 "expanded; not a config file")
            if characters[key] > MAX_EXPANDED_CHARACTERS:
                raise UsageError(f"{origin}: more than {MAX_EXPANDED_CHARACTERS:,} characters once YAML aliases are "
                                 "expanded; not a config file")
            continue
        if key in height:
            continue
        if key in active:
            raise UsageError(f"{origin}: a value contains itself (a recursive YAML alias); not a config file")
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children)


def _own_characters(node: Any) -> int:
    """The characters of a container's own strings (its keys and its string values; nested containers apart)."""
    items = list(node.items()) if isinstance(node, dict) else [(None, value) for value in node]
    return sum((len(k) if isinstance(k, str) else 0) + (len(v) if isinstance(v, str) else 0) for k, v in items)


def _containers(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [value for value in node.values() if isinstance(value, (dict, list))]
    if isinstance(node, list):
        return [value for value in node if isinstance(value, (dict, list))]
    return []


def read_json_object(path, what: str, error=UsageError) -> dict[str, Any]:
    """The JSON object in `path` (`what` names it in errors), within the structure limits above; any unreadable,
    malformed, too deep or non-object file is one `error` line naming the file."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:  # ValueError: bad JSON, or an integer of 4,300+ digits
        raise error(f"{path}: cannot read the {what}: not a readable JSON object ({err.__class__.__name__})") from None
    except RecursionError:
        raise error(f"{path}: cannot read the {what}: not a readable JSON object (nested too deep)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} must hold a JSON object")
    check_structure(data, str(path))
    return data
