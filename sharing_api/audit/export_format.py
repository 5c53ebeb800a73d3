"""The logged entry, and the NDJSON lines of an export, as bytes.

**The entry.** Leaf ``seq`` of a tenant's Merkle tree is ``leaf_hash(entry)`` (RFC 9162 §2.1.1) where
``entry`` is the RFC 8785 canonical JSON of ``{"event": <AuditEvent>, "seq": <seq>}``: the stored
canonical event together with its index. Binding the index into the leaf makes an entry moved to another
position fail its own hash, so a verifier names the moved index instead of only the checkpoint window.
Because the event is already canonical and ``"event" < "seq"``, the entry is made by concatenation.

**An export** is NDJSON, in this order (each line one JSON object, ``\\n``-terminated):

1. a header ``{"log": <origin>, "range": [<hex>...], "start": <first seq>}``; ``range`` holds the
   perfect-subtree roots of the first ``start`` leaves (empty when ``start`` is 0), so a verifier can
   resume the tree without the earlier entries;
2. the signed checkpoints whose size lies in ``[start, end]``, by increasing size:
   ``{"checkpoint": <signed note>}``. They come first so that a one-pass verifier knows where to stop
   and compare roots, in O(log n) memory, and so that cutting the tail of the file leaves a checkpoint
   that covers more entries than remain ("truncated");
3. one line per entry, by sequence number, written as the canonical JSON
   ``{"event": <AuditEvent>, "leaf": "<hex leaf hash>", "seq": <seq>}``. A verifier hashes the bytes
   before ``,"leaf":"`` plus ``,"seq":<seq>}``, which is the entry, without parsing the event.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from sharing_api.audit.merkle import leaf_hash

__all__ = [
    "ENTRY_PREFIX",
    "checkpoint_line",
    "entry_bytes",
    "entry_leaf",
    "entry_line",
    "header_line",
]

ENTRY_PREFIX = b'{"event":'
LEAF_MARK = b',"leaf":"'
SEQ_MARK = b'","seq":'


def entry_bytes(event: bytes, seq: int) -> bytes:
    """The logged entry: canonical ``{"event": event, "seq": seq}`` (``event`` already canonical)."""
    return b'%s%s,"seq":%d}' % (ENTRY_PREFIX, event, seq)


def entry_leaf(event: bytes, seq: int) -> bytes:
    """The RFC 9162 leaf hash of entry ``seq``."""
    return leaf_hash(entry_bytes(event, seq))


def entry_line(event: bytes, seq: int, leaf: bytes) -> bytes:
    """An export line for one entry (see the module docstring)."""
    return b"%s%s%s%s%s%d}\n" % (ENTRY_PREFIX, event, LEAF_MARK, leaf.hex().encode("ascii"), SEQ_MARK, seq)


def header_line(origin: str, start: int, peaks: Iterable[bytes]) -> bytes:
    """The first line of an export."""
    return orjson.dumps({"log": origin, "range": [p.hex() for p in peaks], "start": start}) + b"\n"


def checkpoint_line(note: str) -> bytes:
    """An export line carrying one signed checkpoint."""
    return orjson.dumps({"checkpoint": note}) + b"\n"
