"""Reading a JSON request body within limits (size is enforced by Flask's ``MAX_CONTENT_LENGTH``)."""

from __future__ import annotations

from functools import partial
from itertools import chain, compress
from operator import is_
from typing import Any

import orjson

from sharing_api.errors import InvalidResource, UnsupportedMediaType

JSON_TYPES = ("application/fhir+json", "application/json")


_CONTAINER = frozenset({dict, list}).__contains__
_IS_DICT = partial(is_, dict)
_IS_LIST = partial(is_, list)


def check_depth(value: Any, limit: int) -> None:
    """Refuse nesting deeper than ``limit`` (iterative: a hostile body cannot exhaust the stack).

    One level at a time: the objects and arrays at depth 1 (the value itself), then those inside them
    at depth 2, and so on; the first level beyond ``limit`` that holds any is refused. Each level is
    gathered with ``itertools`` over the parsed value's own ``dict`` and ``list`` (what ``orjson``
    returns), without a Python step per value."""
    level: list[Any] = [value]
    depth = 1
    while level:
        if depth > limit:
            raise InvalidResource(f"the JSON is nested deeper than {limit} levels", "Bundle")
        types = list(map(type, level))
        values = list(
            chain(
                chain.from_iterable(map(dict.values, compress(level, map(_IS_DICT, types)))),
                chain.from_iterable(compress(level, map(_IS_LIST, types))),
            )
        )
        level = list(compress(values, map(_CONTAINER, map(type, values))))
        depth += 1


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
