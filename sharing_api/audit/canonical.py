"""RFC 8785 JSON Canonicalization Scheme (JCS): one byte string per JSON value, to hash and sign.

Serialisation is delegated to the ``rfc8785`` package (Trail of Bits), which implements RFC 8785:

* §3.2.1 no whitespace;
* §3.2.2.2 strings in UTF-8, escaping only ``"``, ``\\``, and control characters (``\\n``, ``\\u000f``);
* §3.2.2.3 numbers as ECMAScript ``Number.prototype.toString`` prints them (``1e+30``, ``0.002``);
* §3.2.3 object members sorted by the UTF-16 code units of their names.
"""

from __future__ import annotations

from typing import Any, cast

import rfc8785


def canonical_json(obj: object) -> bytes:
    """The RFC 8785 canonical UTF-8 serialisation of ``obj``.

    ``obj`` is built from ``dict`` (with ``str`` keys), ``list``, ``tuple``, ``str``, ``int``,
    ``float``, ``bool`` and ``None``. Raises ``ValueError`` for anything JCS cannot represent
    exactly: other types, non-string keys, NaN and infinities, integers beyond ±(2**53 - 1) (I-JSON,
    RFC 7493 §2.2, which RFC 8785 §3 requires), and strings with lone surrogates.
    """
    try:
        return rfc8785.dumps(cast(Any, obj))
    except UnicodeError as exc:  # a lone surrogate in an object key, met while sorting keys
        raise ValueError("JSON text must be valid Unicode") from exc
