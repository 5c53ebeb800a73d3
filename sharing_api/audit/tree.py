"""A log's Merkle tree state that can be stored and resumed: ``merkle.CompactRange`` plus its peaks.

The sequencer keeps, per tenant, the tree size and the roots of the perfect subtrees of ``D[size]``
(one per bit set in ``size``, largest first; RFC 9162 §2.1.1), so that the next batch continues in
O(log n) hashes without reading earlier leaves. A verifier starting mid-log resumes the same way from an
export's header.
"""

from __future__ import annotations

from collections.abc import Sequence

from sharing_api.audit.merkle import HASH_SIZE, CompactRange

__all__ = ["TreeState"]


class TreeState(CompactRange):
    """A ``CompactRange`` that can be packed into bytes and restored from them."""

    __slots__ = ()

    @classmethod
    def restore(cls, size: int, peaks: Sequence[bytes]) -> TreeState:
        """The tree of ``size`` leaves whose perfect-subtree roots are ``peaks`` (largest first).

        Raises ``ValueError`` unless there is one 32-byte peak per bit set in ``size``.
        """
        if size < 0 or len(peaks) != size.bit_count():
            raise ValueError(f"a tree of size {size} has {max(size, 0).bit_count()} peaks, not {len(peaks)}")
        if any(len(p) != HASH_SIZE for p in peaks):
            raise ValueError(f"every peak must be {HASH_SIZE} bytes long")
        state = cls()
        state._peaks = [bytes(p) for p in peaks]
        state._size = size
        return state

    @classmethod
    def unpack(cls, size: int, packed: bytes) -> TreeState:
        """``restore`` from the concatenated peaks that ``pack`` wrote."""
        if len(packed) % HASH_SIZE:
            raise ValueError("packed peaks must be a whole number of hashes")
        return cls.restore(size, [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)])

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """The roots of the perfect subtrees, largest first."""
        return tuple(self._peaks)

    def pack(self) -> bytes:
        """The peaks, concatenated (32 bytes each)."""
        return b"".join(self._peaks)
