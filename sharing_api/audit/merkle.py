"""Merkle trees of the audit log, with SHA-256 hashing as in RFC 9162 (Certificate Transparency 2.0).

A log of ``n`` entries ``D[n] = d[0] .. d[n-1]`` has the Merkle Tree Hash (RFC 9162 §2.1.1)::

    MTH({})     = SHA-256()                                  the empty tree
    MTH({d[0]}) = SHA-256(0x00 || d[0])                      a leaf
    MTH(D[n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  k: largest power of two < n

Everything here works on *leaf hashes* (``leaf_hash(d[i])``), 32 bytes each, so that a verifier can
hash entries as it reads them. Proofs are lists of 32-byte node hashes, ordered from the leaves up,
as RFC 9162 §2.1.3 (inclusion) and §2.1.4 (consistency) define them.

Builders (``root_from_leaf_hashes``, ``inclusion_proof``, ``consistency_proof``, ``CompactRange``)
raise ``ValueError`` on bad arguments. Verifiers (``verify_inclusion``, ``verify_consistency``)
return ``None`` when the proof holds and raise ``ProofError`` otherwise, malformed input included;
they never raise ``IndexError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import sha256
from hmac import compare_digest

HASH_SIZE = 32
"""Bytes in every hash: leaf hashes, node hashes, roots and proof entries."""

EMPTY_ROOT = sha256(b"").digest()
"""Root of the empty tree, ``MTH({}) = SHA-256()`` (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class ProofError(ValueError):
    """An inclusion or consistency proof does not hold, or its input is malformed."""


def leaf_hash(data: bytes) -> bytes:
    """The leaf hash of one log entry: ``SHA-256(0x00 || data)`` (RFC 9162 §2.1.1)."""
    return sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of the tree whose leaf hashes are ``hashes`` (RFC 9162 §2.1.1).

    Works level by level without recursion: each level pairs neighbours and a lone last node moves
    up unchanged, which gives the same tree as the RFC's split at the largest power of two. Time
    O(n), memory O(n); for a stream, use ``CompactRange``. Raises ``ValueError`` unless every hash
    is 32 bytes long.
    """
    if not hashes:
        return EMPTY_ROOT
    if set(map(len, hashes)) != {HASH_SIZE}:
        raise ValueError(f"every leaf hash must be {HASH_SIZE} bytes long")
    level = hashes
    while len(level) > 1:
        pairs = zip(level[0::2], level[1::2], strict=False)  # not strict: an odd last node has no pair
        parents = [sha256(_NODE_PREFIX + left + right).digest() for left, right in pairs]
        if len(level) % 2:
            parents.append(level[-1])
        level = parents
    return bytes(level[0])


class CompactRange:
    """A growing tree that keeps only the roots of its perfect subtrees: O(log n) memory.

    This is the compact range ``[0, size)`` of the transparency-dev/merkle design: after ``n`` appends
    it holds one hash per bit set in ``n``, the roots of the perfect subtrees that ``D[n]`` splits into
    (RFC 9162 §2.1.1), largest first. ``append`` costs O(1) amortised hashes, ``root`` O(log n).
    """

    __slots__ = ("_peaks", "_size")

    def __init__(self) -> None:
        """An empty tree."""
        self._peaks: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        """The number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf, by its 32-byte leaf hash; raises ``ValueError`` if that is not 32 bytes."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes long, not {len(leaf_hash)}")
        peaks = self._peaks
        node = bytes(leaf_hash)
        carry = self._size
        while carry & 1:  # every trailing one bit is a perfect subtree of the new node's size
            node = sha256(_NODE_PREFIX + peaks.pop() + node).digest()
            carry >>= 1
        peaks.append(node)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """``append`` each of ``leaf_hashes`` in turn."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """The Merkle Tree Hash of the leaves so far (``EMPTY_ROOT`` when there are none)."""
        if not self._peaks:
            return EMPTY_ROOT
        node = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            node = sha256(_NODE_PREFIX + peak + node).digest()
        return node


# Proof shapes. Both functions walk the RFC's recursive definitions as loops and return, leaves first,
# the leaf ranges [start, end) whose Merkle Tree Hashes make up the proof. Builders hash these ranges;
# verifiers use only how many there are.


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``): the ``k`` of RFC 9162 §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges of ``PATH(index, D[size])``, RFC 9162 §2.1.3.1; requires ``0 <= index < size``."""
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def _consistency_ranges(old_size: int, size: int) -> list[tuple[int, int]]:
    """The ranges of ``PROOF(old_size, D[size])``, RFC 9162 §2.1.4.1; requires ``0 < old_size <= size``."""
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, size, old_size  # m counts the old tree's leaves from start
    old_tree_is_this_subtree = True  # the b flag of SUBPROOF
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m = start + k, m - k
            old_tree_is_this_subtree = False
    if not old_tree_is_this_subtree:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The inclusion proof ``PATH(index, D[n])`` of leaf ``index`` in the tree of ``hashes``.

    RFC 9162 §2.1.3.1. Raises ``ValueError`` unless ``0 <= index < len(hashes)`` and every hash is
    32 bytes long.
    """
    if not 0 <= index < len(hashes):
        raise ValueError(f"leaf index {index} is outside a tree of size {len(hashes)}")
    return [root_from_leaf_hashes(hashes[start:end]) for start, end in _inclusion_ranges(index, len(hashes))]


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """The consistency proof ``PROOF(old_size, D[n])``, RFC 9162 §2.1.4.1: first ``old_size`` leaves to all.

    The proof between equal sizes is empty. Raises ``ValueError`` unless
    ``0 < old_size <= len(hashes)`` (a proof from the empty tree proves nothing) and every hash is
    32 bytes long.
    """
    if not 0 < old_size <= len(hashes):
        raise ValueError(f"no consistency proof from size {old_size} to size {len(hashes)}")
    return [
        root_from_leaf_hashes(hashes[start:end]) for start, end in _consistency_ranges(old_size, len(hashes))
    ]


def _check_hash(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, bytes) else type(value).__name__
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, not {size}")


def _check_proof(proof: object, expected: int, what: str) -> None:
    if not isinstance(proof, Sequence) or isinstance(proof, bytes | str):
        raise ProofError(f"{what} must be a sequence of hashes, not {type(proof).__name__}")
    if len(proof) != expected:
        raise ProofError(f"{what} has {len(proof)} hashes, expected {expected}")
    for i, p in enumerate(proof):
        _check_hash(p, f"{what}[{i}]")


def _check_size(value: object, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{what} must be a non-negative integer, not {value!r}")


def verify_inclusion(index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Check that the leaf ``leaf_hash`` is number ``index`` in the tree of ``size`` leaves and root ``root``.

    Runs the algorithm of RFC 9162 §2.1.3.2 step by step, after checking that every hash is 32 bytes
    and that the proof has exactly as many hashes as ``PATH(index, D[size])``. Returns ``None`` if
    the proof holds; raises ``ProofError`` otherwise, also when ``index >= size``.
    """
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    _check_hash(leaf_hash, "leaf hash")
    _check_hash(root, "root")
    # 1. leaf_index >= tree_size fails.
    if index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    _check_proof(proof, len(_inclusion_ranges(index, size)), "inclusion proof")
    # 2.-3.
    fn, sn = index, size - 1
    r = leaf_hash
    # 4.
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:  # "if LSB(fn) is not set, right-shift ... until"
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # 5.
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if not compare_digest(r, root):
        raise ProofError("inclusion proof does not lead to the root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends the tree (``old_size``, ``old_root``).

    For ``0 < old_size < new_size`` runs the algorithm of RFC 9162 §2.1.4.2 step by step, after
    checking that every hash is 32 bytes and that the proof has exactly as many hashes as
    ``PROOF(old_size, D[new_size])`` (§2.1.4.1). Equal sizes need an empty proof and equal roots.
    Returns ``None`` if the proof holds; raises ``ProofError`` otherwise, also for ``old_size == 0``
    (every tree extends the empty one: such a proof proves nothing) and ``old_size > new_size``.
    """
    _check_size(old_size, "old tree size")
    _check_size(new_size, "new tree size")
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than new tree size {new_size}")
    if old_size == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old_size == new_size:
        # Nothing to compute: the claim holds exactly when the roots are the same bytes. As in
        # transparency-dev/merkle, their length is not checked here (its vectors use placeholders).
        _check_proof(proof, 0, "consistency proof between equal sizes")
        if not isinstance(old_root, bytes) or not isinstance(new_root, bytes):
            raise ProofError("roots must be bytes")
        if not compare_digest(old_root, new_root):
            raise ProofError("trees of the same size have different roots")
        return
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    _check_proof(proof, len(_consistency_ranges(old_size, new_size)), "consistency proof")
    # 1. An empty consistency_path fails (the length check above already ensures it is not).
    if not proof:
        raise ProofError("consistency proof is empty")
    # 2. An old size that is a power of two is a perfect subtree whose root the proof leaves out.
    path = list(proof)
    if (old_size & (old_size - 1)) == 0:
        path.insert(0, old_root)
    # 3.-4.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5.
    fr = sr = path[0]
    # 6.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:  # "if LSB(fn) is not set, right-shift ... until"
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # 7.
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not compare_digest(fr, old_root):
        raise ProofError("consistency proof does not lead to the old root")
    if not compare_digest(sr, new_root):
        raise ProofError("consistency proof does not lead to the new root")
