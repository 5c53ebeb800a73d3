"""RFC 9162 Merkle trees: known answers, the transparency-dev/merkle test vectors, the RFC's own
recursive definitions as an oracle, and properties over random trees."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sharing_api.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from tests.prerequisites import require

# transparency-dev/merkle testdata/ (Apache-2.0), kept beside the checkout in shared/, never copied in.
TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "merkle-testdata"

# The RFC 6962 test leaves and the roots of their first 0..8 leaves, as in transparency-dev/merkle
# testonly/constants.go (Apache-2.0). The test vectors' happy paths are proofs over this tree.
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
LEAF_HASHES = [leaf_hash(d) for d in LEAVES]


# --- The RFC's recursive definitions, transcribed literally, as an oracle for small trees -----------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rfc_mth(d: Sequence[bytes]) -> bytes:
    """MTH, RFC 9162 §2.1.1, over leaf hashes."""
    if len(d) == 0:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(rfc_mth(d[:k]), rfc_mth(d[k:]))


def rfc_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 9162 §2.1.3.1."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*rfc_path(m, d[:k]), rfc_mth(d[k:])]
    return [*rfc_path(m - k, d[k:]), rfc_mth(d[:k])]


def rfc_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), RFC 9162 §2.1.4.1."""
    if m == len(d):
        return [] if b else [rfc_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*rfc_subproof(m, d[:k], b), rfc_mth(d[k:])]
    return [*rfc_subproof(m - k, d[k:], False), rfc_mth(d[:k])]


def hashes_for(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


# --- Known answers -------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"") == ROOTS[1]
    assert node_hash(LEAF_HASHES[0], LEAF_HASHES[1]) == ROOTS[2]
    assert leaf_hash(b"ab") != node_hash(b"a", b"b")


@pytest.mark.parametrize("size", range(len(ROOTS)))
def test_roots_of_the_rfc6962_test_tree(size: int) -> None:
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == ROOTS[size]
    builder = CompactRange()
    builder.extend(LEAF_HASHES[:size])
    assert (builder.size, builder.root()) == (size, ROOTS[size])


# --- transparency-dev/merkle test vectors --------------------------------------------------------


@dataclass(frozen=True)
class Vector:
    name: str  # path under TESTDATA: the test id
    data: dict[str, Any]

    def b64(self, key: str) -> bytes:
        return base64.b64decode(self.data[key])

    @property
    def proof(self) -> list[bytes]:
        return [base64.b64decode(p) for p in self.data["proof"] or []]  # null in some files

    @property
    def want_err(self) -> bool:
        return bool(self.data["wantErr"])


MISSING = f"the Merkle test vectors are missing: expected {TESTDATA} (the reference pack beside the checkout)"


@pytest.fixture(scope="module")
def testdata() -> Path:
    """The vectors' folder; without the reference pack the vector tests skip (fail in CI: require())."""
    require(TESTDATA.is_dir(), MISSING)
    return TESTDATA


def load_vectors(folder: str) -> list[Vector]:
    """Every JSON vector under TESTDATA/folder; none when the reference pack is absent (the tests then
    skip through the ``testdata`` fixture). A pack without the folder's vectors fails the run."""
    if not TESTDATA.is_dir():
        return []
    files = sorted((TESTDATA / folder).rglob("*.json"))
    if not files:
        raise FileNotFoundError(f"no test vectors in {TESTDATA / folder}")
    return [Vector(f.relative_to(TESTDATA).as_posix(), json.loads(f.read_text())) for f in files]


# The subtree vectors test the C2SP/MTC subtree API (VerifySubtreeInclusion/-Consistency over a
# subtree [start, end)). Those with start == 0 are plain RFC 9162 proofs: the subtree [0, end) is the
# tree of size end. The rest (start > 0, and the empty subtree [0, 0), which that API accepts) are
# out of scope here.
def _subtree_inclusion_as_rfc9162(v: Vector) -> bool:
    return bool(v.data["start"] == 0)


def _subtree_consistency_as_rfc9162(v: Vector) -> bool:
    return bool(v.data["start"] == 0 and v.data["end"] > 0)


INCLUSION_VECTORS = load_vectors("inclusion") + [
    v for v in load_vectors("subtreeinclusion") if _subtree_inclusion_as_rfc9162(v)
]
CONSISTENCY_VECTORS = load_vectors("consistency") + [
    v for v in load_vectors("subtreeconsistency") if _subtree_consistency_as_rfc9162(v)
]


def _params(vectors: list[Vector]) -> list[Any]:
    if not TESTDATA.is_dir():  # one placeholder case, which the ``testdata`` fixture skips with the reason
        return [pytest.param(None, id="reference-pack-missing")]
    return [pytest.param(v, id=v.name) for v in vectors]


def _check(v: Vector, verify: Callable[[], None]) -> None:
    if v.want_err:
        with pytest.raises(ProofError):
            verify()
    else:
        verify()


@pytest.mark.parametrize("v", _params(INCLUSION_VECTORS))
def test_inclusion_vector(v: Vector, testdata: Path) -> None:
    size = v.data["treeSize"] if "treeSize" in v.data else v.data["end"]
    _check(v, lambda: verify_inclusion(v.data["leafIdx"], size, v.b64("leafHash"), v.proof, v.b64("root")))


@pytest.mark.parametrize("v", _params(CONSISTENCY_VECTORS))
def test_consistency_vector(v: Vector, testdata: Path) -> None:
    if "size1" in v.data:
        old_size, new_size = v.data["size1"], v.data["size2"]
    else:
        old_size, new_size = v.data["end"], v.data["size"]
    _check(v, lambda: verify_consistency(old_size, new_size, v.b64("root1"), v.b64("root2"), v.proof))


def test_vector_counts(testdata: Path) -> None:
    """Guards the selection above: a change upstream shows up here rather than as silently fewer tests."""
    assert len(load_vectors("inclusion")) == 98
    assert len(load_vectors("consistency")) == 98
    assert (len(INCLUSION_VECTORS), len(CONSISTENCY_VECTORS)) == (98 + 101, 98 + 91)


def test_equal_sizes_with_equal_roots_and_no_proof() -> None:
    verify_consistency(1, 1, ROOTS[1], ROOTS[1], [])
    verify_consistency(5, 5, ROOTS[5], ROOTS[5], [])


# The happy-path vectors are proofs over the RFC 6962 test tree: building them must give the same bytes.
@pytest.mark.parametrize("v", _params([v for v in INCLUSION_VECTORS if v.name.endswith("/happy-path.json")]))
def test_inclusion_proof_reproduces_vector(v: Vector, testdata: Path) -> None:
    size = v.data["treeSize"] if "treeSize" in v.data else v.data["end"]
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == v.b64("root")
    assert inclusion_proof(LEAF_HASHES[:size], v.data["leafIdx"]) == v.proof


@pytest.mark.parametrize(
    "v", _params([v for v in CONSISTENCY_VECTORS if v.name.endswith("/happy-path.json")])
)
def test_consistency_proof_reproduces_vector(v: Vector, testdata: Path) -> None:
    old_size, new_size = (
        (v.data["size1"], v.data["size2"]) if "size1" in v.data else (v.data["end"], v.data["size"])
    )
    assert root_from_leaf_hashes(LEAF_HASHES[:old_size]) == v.b64("root1")
    assert root_from_leaf_hashes(LEAF_HASHES[:new_size]) == v.b64("root2")
    assert consistency_proof(LEAF_HASHES[:new_size], old_size) == v.proof


# --- Against the RFC's definitions, exhaustively for small trees -----------------------------------


@pytest.mark.parametrize("n", range(1, 34))
def test_matches_rfc_definitions(n: int) -> None:
    hashes = hashes_for(n)
    root = rfc_mth(hashes)
    assert root_from_leaf_hashes(hashes) == root
    builder = CompactRange()
    for size in range(1, n + 1):
        builder.append(hashes[size - 1])
        assert builder.root() == rfc_mth(hashes[:size])
    for index in range(n):
        proof = inclusion_proof(hashes, index)
        assert proof == rfc_path(index, hashes)
        verify_inclusion(index, n, hashes[index], proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, n, hashes[index], [*proof, root], root)
        if proof:
            with pytest.raises(ProofError):
                verify_inclusion(index, n, hashes[index], proof[:-1], root)
    for old_size in range(1, n + 1):
        proof = consistency_proof(hashes, old_size)
        assert proof == rfc_subproof(old_size, hashes, True)
        old_root = rfc_mth(hashes[:old_size])
        verify_consistency(old_size, n, old_root, root, proof)
        with pytest.raises(ProofError):
            verify_consistency(old_size, n, old_root, root, [*proof, root])
        if proof:
            with pytest.raises(ProofError):
                verify_consistency(old_size, n, old_root, root, proof[:-1])


# --- Malformed input: always ProofError (verifiers) or ValueError (builders) -----------------------

H = ROOTS[8]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((8, 8, H, [H, H, H], H), id="index-equals-size"),
        pytest.param((9, 8, H, [H, H, H], H), id="index-beyond-size"),
        pytest.param((-1, 8, H, [H, H, H], H), id="negative-index"),
        pytest.param((0, 0, H, [], H), id="empty-tree"),
        pytest.param((0, -1, H, [], H), id="negative-size"),
        pytest.param(("0", 8, H, [H, H, H], H), id="index-not-int"),
        pytest.param((True, 8, H, [H, H, H], H), id="index-bool"),
        pytest.param((0, 8, H[:31], [H, H, H], H), id="short-leaf-hash"),
        pytest.param((0, 8, H, [H, H, H], H + b"\0"), id="long-root"),
        pytest.param((0, 8, H, [H, H[:31], H], H), id="short-proof-hash"),
        pytest.param((0, 8, H, [H, H, "x" * 32], H), id="proof-hash-not-bytes"),
        pytest.param((0, 8, H, [H, H], H), id="proof-too-short"),
        pytest.param((0, 8, H, [H, H, H, H], H), id="proof-too-long"),
        pytest.param((0, 8, H, None, H), id="proof-none"),
        pytest.param((0, 8, H, H * 3, H), id="proof-bytes"),
        pytest.param((0, 1, H, [], None), id="root-none"),
        pytest.param((2**64, 2**64 + 1, H, [H] * 65, H), id="huge-sizes"),
    ],
)
def test_verify_inclusion_rejects_malformed_input(args: tuple[Any, ...]) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(*args)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param((5, 4, H, H, [H]), id="old-larger"),
        pytest.param((0, 4, H, H, [H]), id="old-empty"),
        pytest.param((0, 0, EMPTY_ROOT, EMPTY_ROOT, []), id="both-empty"),
        pytest.param((-1, 4, H, H, [H]), id="negative-old"),
        pytest.param((1, "4", H, H, [H]), id="size-not-int"),
        pytest.param((4, 4, H, H, [H]), id="equal-sizes-with-proof"),
        pytest.param((4, 4, H, ROOTS[4], []), id="equal-sizes-different-roots"),
        pytest.param((4, 8, H[:31], H, [H]), id="short-old-root"),
        pytest.param((4, 8, H, b"", [H]), id="empty-new-root"),
        pytest.param((4, 8, H, H, []), id="empty-proof"),
        pytest.param((3, 8, H, H, [H]), id="proof-too-short"),
        pytest.param((4, 8, H, H, [H, H]), id="proof-too-long"),
        pytest.param((4, 8, H, H, [H[:16]]), id="short-proof-hash"),
        pytest.param((4, 8, H, H, None), id="proof-none"),
        pytest.param((4, 8, H, H, H), id="proof-bytes"),
    ],
)
def test_verify_consistency_rejects_malformed_input(args: tuple[Any, ...]) -> None:
    with pytest.raises(ProofError):
        verify_consistency(*args)


@given(
    index=st.integers(-2, 40),
    size=st.integers(-2, 40),
    leaf=st.binary(max_size=40),
    proof=st.lists(st.binary(min_size=30, max_size=33), max_size=8),
    root=st.binary(min_size=30, max_size=33),
)
def test_verify_inclusion_raises_only_proof_error(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> None:
    with contextlib.suppress(ProofError):  # and nothing else
        verify_inclusion(index, size, leaf, proof, root)


@given(
    old_size=st.integers(-2, 40),
    new_size=st.integers(-2, 40),
    old_root=st.binary(min_size=30, max_size=33),
    new_root=st.binary(min_size=30, max_size=33),
    proof=st.lists(st.binary(min_size=30, max_size=33), max_size=8),
)
def test_verify_consistency_raises_only_proof_error(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: list[bytes]
) -> None:
    with contextlib.suppress(ProofError):  # and nothing else
        verify_consistency(old_size, new_size, old_root, new_root, proof)


def test_builders_reject_bad_arguments() -> None:
    hashes = hashes_for(4)
    with pytest.raises(ValueError, match="32 bytes"):
        root_from_leaf_hashes([*hashes, b"short"])
    for index in (-1, 4):
        with pytest.raises(ValueError, match="outside"):
            inclusion_proof(hashes, index)
    for old_size in (0, 5):
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_proof(hashes, old_size)
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"\x00" * 33)


# --- Properties over random trees ----------------------------------------------------------------

trees = st.lists(st.binary(max_size=24), min_size=1, max_size=80).map(lambda ds: [leaf_hash(d) for d in ds])


def flipped(value: bytes, position: int, mask: int) -> bytes:
    return value[:position] + bytes([value[position] ^ mask]) + value[position + 1 :]


@settings(deadline=None)
@given(hashes=trees, data=st.data())
def test_inclusion_proofs_verify_and_any_flipped_byte_fails(hashes: list[bytes], data: st.DataObject) -> None:
    n = len(hashes)
    index = data.draw(st.integers(0, n - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    root = root_from_leaf_hashes(hashes)
    proof = inclusion_proof(hashes, index)
    verify_inclusion(index, n, hashes[index], proof, root)
    for i, p in enumerate(proof):
        for pos in range(32):
            bad = [*proof[:i], flipped(p, pos, mask), *proof[i + 1 :]]
            with pytest.raises(ProofError):
                verify_inclusion(index, n, hashes[index], bad, root)
    for pos in range(32):
        with pytest.raises(ProofError):
            verify_inclusion(index, n, flipped(hashes[index], pos, mask), proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, n, hashes[index], proof, flipped(root, pos, mask))


@settings(deadline=None)
@given(hashes=trees, data=st.data())
def test_consistency_proofs_verify_and_any_flipped_byte_fails(
    hashes: list[bytes], data: st.DataObject
) -> None:
    n = len(hashes)
    old_size = data.draw(st.integers(1, n), label="old_size")
    mask = data.draw(st.integers(1, 255), label="mask")
    old_root, new_root = root_from_leaf_hashes(hashes[:old_size]), root_from_leaf_hashes(hashes)
    proof = consistency_proof(hashes, old_size)
    verify_consistency(old_size, n, old_root, new_root, proof)
    for i, p in enumerate(proof):
        for pos in range(32):
            bad = [*proof[:i], flipped(p, pos, mask), *proof[i + 1 :]]
            with pytest.raises(ProofError):
                verify_consistency(old_size, n, old_root, new_root, bad)
    for pos in range(32):
        with pytest.raises(ProofError):
            verify_consistency(old_size, n, flipped(old_root, pos, mask), new_root, proof)
        with pytest.raises(ProofError):
            verify_consistency(old_size, n, old_root, flipped(new_root, pos, mask), proof)


@given(hashes=trees)
def test_compact_range_matches_root_at_every_size(hashes: list[bytes]) -> None:
    builder = CompactRange()
    for size, h in enumerate(hashes, start=1):
        builder.append(h)
        assert builder.root() == root_from_leaf_hashes(hashes[:size])
    assert builder.size == len(hashes)
