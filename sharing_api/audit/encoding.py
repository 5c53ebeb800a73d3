"""RFC 8785 canonical bytes of an AuditEvent, fast: ``orjson`` where it provably agrees with JCS.

``canonical.canonical_json`` (the ``rfc8785`` package) is exact for every JSON value but pure Python:
some 400 µs for a 7 KB AuditEvent, too slow for a request path of 1,000 requests/s (product.md §6).
``orjson`` with ``OPT_SORT_KEYS`` writes the same bytes for the values AuditEvents are made of:

* strings: both write UTF-8 unescaped except ``"``, ``\\`` and U+0000..U+001F, which both escape as
  ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` in lower case (RFC 8785 §3.2.2.2); both refuse lone surrogates;
* integers within ±(2**53 - 1), ``true``, ``false``, ``null``: one spelling each;
* object members: sorted by UTF-16 code units in JCS (§3.2.3), by code points in orjson; the two
  orders are the same for ASCII names.

So ``canonical_event`` walks the value once; when it holds only dicts with ASCII ``str`` keys, lists,
tuples, ``str``, ``bool``, ``None`` and integers in range, it returns ``orjson``'s bytes, and otherwise
(floats, non-ASCII names, other types) it defers to ``canonical_json``, which also raises the
``ValueError`` for what JCS cannot represent. A property test checks both paths give the same bytes.
"""

from __future__ import annotations

import orjson

from sharing_api.audit.canonical import canonical_json

__all__ = ["canonical_event"]

_MAX_INT = 2**53 - 1


def _orjson_is_canonical(value: object) -> bool:
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is dict:
            for k, x in v.items():  # type: ignore[attr-defined]
                if type(k) is not str or not k.isascii():
                    return False
                push(x)
        elif t is list or t is tuple:
            extend(v)  # type: ignore[arg-type]
        elif t is int:
            if not -_MAX_INT <= v <= _MAX_INT:  # type: ignore[operator]
                return False
        else:
            return False
    return True


def canonical_event(value: object) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value``; raises ``ValueError`` where JCS has none.

    (The request path skips the walk: ``events.event_bytes`` writes with ``orjson`` directly when
    ``events.plain_facts`` vouches for every value.)
    """
    if _orjson_is_canonical(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: let canonical_json say what is wrong
    return canonical_json(value)
