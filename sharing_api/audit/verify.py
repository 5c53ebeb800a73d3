"""Offline verification of an audit-log export: does it match what the log signed, and if not, where not.

``verify`` reads an export (``export_format``) once, from the first line to the last, holding the tree
as a compact range (O(log n) memory, plus the list of checkpoints from the head of the export). It
recomputes every leaf hash from the entry bytes, rebuilds the Merkle tree, and compares its root with
each signed checkpoint when the tree reaches that checkpoint's size (domain.md "Audit"; security-tests
AUD-06, AUD-08). It stops at the first problem and names it:

=================  ============================================================  ===============
problem            meaning                                                       ``index``
=================  ============================================================  ===============
altered            an entry's recomputed leaf hash differs from its listed one   that entry
missing            a sequence number is skipped and never comes, or later        the first gap
                   entries were renumbered down over a removed one
inserted           a sequence number comes twice, or later entries were          that number
                   renumbered up to make room for another
reordered          sequence numbers out of order, or two entries swapped         the first one
                                                                                 out of place
truncated          a signed checkpoint covers more entries than the export has   first absent
forged_checkpoint  a checkpoint's signature fails with the pinned key, or it     ``None``
                   names another log
root_mismatch      the rebuilt root differs from a signed checkpoint: some       window start
                   entry in the ``window`` (after the previous checkpoint)
                   changed together with its listed leaf hash
malformed          a line is not in the export format                            where it was
=================  ============================================================  ===============

Each leaf hash binds the entry's index (``export_format``), so an entry moved to another position no
longer hashes to its listed leaf, and the verifier tells a swap from a removal or an insertion that
renumbered the entries after it by the nearby index the leaf does match.

Entries after the export's last checkpoint are covered by no signature: they are counted
(``unsigned``) but cannot be proven (``dho-share audit export`` signs a checkpoint first, so it has
none). Cutting entries from the tail leaves a checkpoint that covers them (truncated); cutting the
checkpoint lines as well is only visible against a checkpoint the auditor already holds, passed as
``trusted`` (e.g. the latest one from the previous verification, or fetched from the server).
"""

from __future__ import annotations

import binascii
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha256
from hmac import compare_digest

import orjson

from sharing_api.audit.checkpoints import CheckpointError, NoteVerifier
from sharing_api.audit.export_format import ENTRY_PREFIX, LEAF_MARK, SEQ_MARK, entry_leaf
from sharing_api.audit.tree import TreeState

__all__ = ["Problem", "VerificationReport", "verify"]

_LEAF_AT = len(LEAF_MARK)
_SEQ_AT = _LEAF_AT + 64
_DIGITS_AT = _SEQ_AT + len(SEQ_MARK)
_REORDER_REACH = 16  # how far around a bad entry to look for the position it was logged at


class Problem(StrEnum):
    ALTERED = "altered"
    MISSING = "missing"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    FORGED_CHECKPOINT = "forged_checkpoint"
    ROOT_MISMATCH = "root_mismatch"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """The outcome of ``verify``.

    ``ok`` is true when no problem was found. ``entries`` counts the entries hashed and placed in the
    tree; ``checkpoints`` the checkpoints whose root matched; ``signed_size`` is the largest tree size a
    matching checkpoint proves (0 if none) and ``unsigned`` the entries after it. On a problem,
    ``problem``, ``index`` (see the module table), ``window`` (for ``root_mismatch``: the range
    ``[start, end)`` of sequence numbers in which the change must be) and ``detail`` say what is wrong.
    """

    ok: bool
    origin: str
    start: int
    entries: int
    checkpoints: int
    signed_size: int
    unsigned: int
    problem: Problem | None = None
    index: int | None = None
    window: tuple[int, int] | None = None
    detail: str = ""


class _Failed(Exception):
    def __init__(
        self, problem: Problem, index: int | None, detail: str, window: tuple[int, int] | None = None
    ):
        super().__init__(detail)
        self.problem, self.index, self.detail, self.window = problem, index, detail, window


def _malformed(index: int | None, what: str) -> _Failed:
    return _Failed(Problem.MALFORMED, index, what)


def _header(line: bytes) -> tuple[str, int, TreeState]:
    try:
        head = orjson.loads(line)
        origin, start, peaks = head["log"], head["start"], [bytes.fromhex(p) for p in head["range"]]
        if not isinstance(origin, str) or type(start) is not int:
            raise TypeError
        return origin, start, TreeState.restore(start, peaks)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise _malformed(None, "the first line is not an export header") from exc


def _logged_at(event: bytes, listed: bytes, seq: int) -> int | None:
    """The sequence number near ``seq`` at which ``event`` was logged with leaf ``listed``, if any."""
    for other in range(max(0, seq - _REORDER_REACH), seq + _REORDER_REACH + 1):
        if other != seq and compare_digest(entry_leaf(event, other), listed):
            return other
    return None


class _Verifier:
    """One pass over one export; its counters are what the report says, also after a failure."""

    def __init__(self, public_key: NoteVerifier):
        self.key = public_key
        self.origin = ""
        self.start = 0
        self.state = TreeState()
        self.matched = 0
        self.signed = 0

    def report(self, failed: _Failed | None = None) -> VerificationReport:
        size = self.state.size
        return VerificationReport(
            ok=failed is None,
            origin=self.origin,
            start=self.start,
            entries=size - self.start,
            checkpoints=self.matched,
            signed_size=self.signed,
            unsigned=size - max(self.signed, self.start),
            problem=failed.problem if failed else None,
            index=failed.index if failed else None,
            window=failed.window if failed else None,
            detail=failed.detail if failed else "",
        )

    def run(self, lines: Iterable[bytes], trusted: str | None) -> None:
        it = iter(lines)
        first = next(it, None)
        if first is None:
            raise _malformed(None, "the export is empty")
        self.origin, self.start, self.state = _header(first)
        roots: dict[int, bytes] = {}
        notes = [trusted] if trusted is not None else []
        line = b""
        for line in it:
            if line.startswith(ENTRY_PREFIX):
                break
            notes.append(_note(line))
        else:
            line = b""
        for note in notes:
            try:
                body = self.key.open(note, origin=self.origin)
            except CheckpointError as exc:
                raise _Failed(Problem.FORGED_CHECKPOINT, None, f"checkpoint rejected: {exc}") from exc
            if roots.setdefault(body.size, body.root) != body.root:
                raise _Failed(
                    Problem.FORGED_CHECKPOINT, None, f"two checkpoints of size {body.size} disagree"
                )
        if any(size < self.start for size in roots):
            raise _malformed(None, "a checkpoint is older than the start of the export")
        head = [_segment(line)] if line else []
        readinto = getattr(lines, "readinto", None)
        rest = _chunked(readinto) if callable(readinto) else map(_segment, it)
        self._replay(itertools.chain(head, rest), sorted(roots.items()))

    def _replay(self, segments: Iterator[_Segment], pending: list[tuple[int, bytes]]) -> None:
        """Hash and place every entry, comparing roots at checkpoints.

        The hot loop: the expected entry is recognised by one comparison of its tail
        (``","seq":<expected>}``), hashed in two updates of a prepared SHA-256 state straight from the
        read buffer, and checked against its listed leaf; anything else takes the slow path, which
        parses the line and names the problem.
        """
        state, start = self.state, self.start
        cursor = 0
        if pending and pending[0][0] == start:  # a checkpoint at the start checks the header's range
            if not compare_digest(state.root(), pending[0][1]):
                raise _Failed(Problem.ROOT_MISMATCH, None, f"the header's range is not the tree at {start}")
            self.signed, self.matched, cursor = start, 1, 1
        next_size = pending[cursor][0] if cursor < len(pending) else -1
        prev_signed = expected = start
        append, hexlify = state.append, binascii.hexlify
        leaf_prefix = sha256(b"\x00")
        leaf_mark, entry_prefix, leaf_at, seq_at = LEAF_MARK, ENTRY_PREFIX, _LEAF_AT, _SEQ_AT
        expected_tail = b'","seq":%d}' % expected
        gap: tuple[int, int] | None = None  # (first missing index, the index that came instead)
        viewed: bytes | bytearray = b""
        view = memoryview(viewed)
        for buf, pos, end in segments:
            k = buf.rfind(leaf_mark, pos, end)
            if (
                gap is None
                and k > pos
                and buf[k + seq_at : end] == expected_tail
                and buf.startswith(entry_prefix, pos)
            ):
                if buf is not viewed:
                    viewed, view = buf, memoryview(buf)
                h = leaf_prefix.copy()
                h.update(view[pos:k])
                h.update(view[k + seq_at + 1 : end])  # ,"seq":<digits>}
                leaf = h.digest()
                if hexlify(leaf) != buf[k + leaf_at : k + seq_at]:
                    self._mismatch(buf[pos:end], k - pos, expected, segments)
                append(leaf)
                expected += 1
                expected_tail = b'","seq":%d}' % expected
                if expected == next_size:
                    if not compare_digest(state.root(), pending[cursor][1]):
                        raise _Failed(
                            Problem.ROOT_MISMATCH,
                            prev_signed,
                            f"the entries do not match the checkpoint for size {next_size}: "
                            f"an entry in [{prev_signed}, {next_size}) changed with its leaf hash",
                            window=(prev_signed, next_size),
                        )
                    self.signed = prev_signed = next_size
                    self.matched += 1
                    cursor += 1
                    next_size = pending[cursor][0] if cursor < len(pending) else -1
                continue
            seq = _sequence_number(buf[pos:end], k - pos, expected)
            if gap is not None:
                if gap[0] <= seq < gap[1]:
                    raise _Failed(
                        Problem.REORDERED,
                        gap[0],
                        f"out of order: index {gap[1]} is listed before index {seq}",
                    )
                continue  # read on: a skipped index that turns up later is reordered, not missing
            if seq > expected:
                gap = (expected, seq)
                continue
            raise _Failed(Problem.INSERTED, seq, f"index {seq} appears again after index {expected - 1}")
        if gap is not None:
            raise _Failed(Problem.MISSING, gap[0], f"index {gap[0]} is missing (index {gap[1]} follows)")
        if cursor < len(pending):
            raise _Failed(
                Problem.TRUNCATED,
                expected,
                f"a checkpoint signs {pending[-1][0]} entries but the export stops before index {expected}",
            )

    @staticmethod
    def _mismatch(line: bytes | bytearray, k: int, seq: int, following: Iterator[_Segment]) -> None:
        """Name what is wrong with entry ``seq`` whose bytes do not hash to its listed leaf.

        If the listed leaf is the hash of these bytes at a nearby index, the entry was logged there and
        has been moved: logged later and the next line holds the entry logged here, two entries were
        swapped (reordered); logged later otherwise, entries after a removed one were renumbered
        (missing); logged earlier, entries were renumbered to make room (inserted at that index).
        """
        logged = _logged_position(line, k, seq)
        if logged == seq:  # the right hash, spelt otherwise (upper case): the line is not canonical
            raise _malformed(seq, f"the leaf hash of index {seq} is not in lower-case hex")
        if logged is None:
            raise _Failed(Problem.ALTERED, seq, f"entry {seq} does not hash to its leaf hash")
        moved = f"the entry listed at index {seq} was logged at index {logged}"
        if logged < seq:
            raise _Failed(Problem.INSERTED, logged, f"{moved}: an entry was inserted at index {logged}")
        segment = next(following, None)
        after = segment[0][segment[1] : segment[2]] if segment else None
        k2 = after.rfind(LEAF_MARK) if after else -1
        if after is not None and k2 > 0 and _logged_position(after, k2, seq + 1) == seq:
            raise _Failed(Problem.REORDERED, seq, f"{moved}, and the next entry at index {seq}: swapped")
        raise _Failed(Problem.MISSING, seq, f"{moved}: entry {seq} was removed and later ones renumbered")


def _logged_position(line: bytes | bytearray, k: int, seq: int) -> int | None:
    """The index at which the entry bytes of ``line`` hash to its listed leaf (``seq`` itself, or one
    within reach of it), or ``None``."""
    try:
        listed = bytes.fromhex(line[k + _LEAF_AT : k + _SEQ_AT].decode("ascii"))
    except ValueError:
        return None
    event = bytes(line[len(ENTRY_PREFIX) : k])
    if compare_digest(entry_leaf(event, seq), listed):
        return seq
    return _logged_at(event, listed, seq)


_Segment = tuple[bytes | bytearray, int, int]
"""A line as (buffer, start, end): ``buffer[start:end]`` without its newline. The buffer may be reused
for the next lines, so a segment is read before the next one is asked for (or copied)."""
_CHUNK = 1 << 22


def _segment(line: bytes) -> _Segment:
    return line, 0, len(line) - 1 if line.endswith(b"\n") else len(line)


def _chunked(readinto: Callable[[memoryview], int | None]) -> Iterator[_Segment]:
    """The lines of a binary file, read into one reused 4 MiB buffer (no allocation per line or chunk).

    A line longer than the buffer gets a buffer twice the size.
    """
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    filled = 0
    while n := readinto(view[filled:]):
        filled += n
        pos, find = 0, buf.find
        while (nl := find(b"\n", pos, filled)) >= 0:
            yield buf, pos, nl
            pos = nl + 1
        rest = filled - pos
        if pos == 0 and filled == len(buf):
            buf = bytearray(buf) + bytearray(len(buf))  # a new buffer: views of the old one may live on
            view = memoryview(buf)
        elif pos:
            buf[:rest] = buf[pos:filled]
        filled = rest
    if filled:
        yield buf, 0, filled


def _sequence_number(line: bytes | bytearray, k: int, expected: int) -> int:
    """The sequence number of an entry line (no newline) that is not the expected entry; ``malformed``
    if it has none."""
    if k <= 0 or not line.startswith(ENTRY_PREFIX) or line[k + _SEQ_AT : k + _DIGITS_AT] != SEQ_MARK:
        raise _malformed(expected, f"the line for index {expected} is not an entry line")
    digits = line[k + _DIGITS_AT : -1]
    if not line.endswith(b"}") or not digits.isdigit() or (digits[:1] == b"0" and len(digits) > 1):
        raise _malformed(expected, f"the line for index {expected} has no valid sequence number")
    return int(digits)


def _note(line: bytes) -> str:
    try:
        note = orjson.loads(line)["checkpoint"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise _malformed(None, "a line between the header and the entries is not a checkpoint") from exc
    if not isinstance(note, str):
        raise _malformed(None, "a checkpoint line holds no note")
    return note


def verify(
    lines: Iterable[bytes], public_key: NoteVerifier, *, trusted: str | None = None
) -> VerificationReport:
    """Verify an export against the pinned key; the module docstring says what is checked and named.

    ``lines`` are the export's lines as bytes, or a file opened in binary mode (read in large chunks,
    which is faster than line by line). ``public_key``
    is the pinned key (``checkpoints.load_public_key``). ``trusted`` is an optional signed checkpoint
    the auditor already holds; the export must reach its size and match its root. Bad input never
    raises: every problem is in the report.
    """
    verifier = _Verifier(public_key)
    try:
        verifier.run(lines, trusted)
    except _Failed as failed:
        return verifier.report(failed)
    return verifier.report()
