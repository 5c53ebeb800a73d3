"""Reading a JSON request body within limits (size is enforced by Flask's ``MAX_CONTENT_LENGTH``)."""

from __future__ import annotations

from typing import Any

import orjson

from sharing_api.errors import InvalidResource, UnsupportedMediaType

JSON_TYPES = ("application/fhir+json", "application/json")


def check_depth(value: Any, limit: int) -> None:
    """Refuse nesting deeper than ``limit`` (iterative: a hostile body cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise InvalidResource(f"the JSON is nested deeper than {limit} levels", "Bundle")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))


def parse_json(raw: bytes, content_type: str | None, *, max_depth: int) -> Any:
    """The parsed body; ``InvalidResource`` for bad JSON, ``UnsupportedMediaType`` for other types."""
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime not in JSON_TYPES:
        raise UnsupportedMediaType(f"send {JSON_TYPES[0]} (got {mime or 'no Content-Type'})")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses nesting beyond 1024 levels itself, with this same error (never RecursionError).
        raise InvalidResource(f"the body is not valid JSON: {exc}") from exc
    check_depth(value, max_depth)
    return value
