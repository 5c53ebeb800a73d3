"""Tamper evidence (security-tests.md AUD-06, AUD-08): the verifier fails and names the first bad index.

Two kinds of attacker: one who edits an export file, and one who edits the stored log in the database
and then lets the server export it. The log has 95 entries and checkpoints at 10, 20, ..., 90 and 95.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import orjson
import pytest
from sqlalchemy import select, update

from sharing_api.audit.checkpoints import AuditSigner, CheckpointBody
from sharing_api.audit.events import build_audit_event
from sharing_api.audit.export_format import checkpoint_line, entry_leaf, entry_line, header_line
from sharing_api.audit.log import AuditLog
from sharing_api.audit.verify import Problem, VerificationReport, verify
from sharing_api.store.schema import audit_entries
from tests.audit.factories import OTHER_TENANT, TENANT, facts, fill, tampering

e = audit_entries
SIZE = 95
CHECKPOINTS = 10  # 10, 20, ..., 90, 95


@pytest.fixture
def exported(log: AuditLog) -> list[bytes]:
    fill(log, SIZE)
    log.drain(max_batch=40)
    log.checkpoint(TENANT)
    lines = list(log.export(TENANT))
    assert len(lines) == 1 + CHECKPOINTS + SIZE
    return lines


def at(seq: int) -> int:
    """The line number of entry ``seq`` in a whole export."""
    return 1 + CHECKPOINTS + seq


def parse(line: bytes) -> tuple[bytes, bytes, int]:
    """(event bytes, leaf, seq) of an entry line."""
    k = line.rfind(b',"leaf":"')
    return line[9:k], bytes.fromhex(line[k + 9 : k + 73].decode()), int(line[k + 81 : -2])


def check(lines: list[bytes], signer: AuditSigner, trusted: str | None = None) -> VerificationReport:
    """Verify as a list of lines and as a binary file (read in chunks); both must say the same."""
    as_lines = verify(lines, signer.verifier, trusted=trusted)
    as_file = verify(io.BytesIO(b"".join(lines)), signer.verifier, trusted=trusted)
    assert as_file == as_lines
    return as_lines


def test_chunks_that_cut_lines_anywhere(
    exported: list[bytes], signer: AuditSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    for chunk in (1, 7, 1000, 4096):
        monkeypatch.setattr("sharing_api.audit.verify._CHUNK", chunk)
        assert check(exported, signer).ok
        tampered = list(exported)
        tampered[at(42)] = altered(tampered[at(42)])
        assert_fails(check(tampered, signer), Problem.ALTERED, 42)
        assert check([*exported[:-1], exported[-1].rstrip(b"\n")], signer).ok  # no final newline


def assert_fails(report: VerificationReport, problem: Problem, index: int | None) -> None:
    assert not report.ok
    assert (report.problem, report.index) == (problem, index), report.detail


def test_an_untouched_export_verifies(exported: list[bytes], signer: AuditSigner) -> None:
    report = check(exported, signer)
    assert report.ok, report.detail
    assert (report.entries, report.checkpoints, report.signed_size, report.unsigned) == (SIZE, 10, SIZE, 0)
    assert report.origin == f"dho-share/audit/{TENANT}"


# -- an edited export file --------------------------------------------------------------------------


def altered(line: bytes) -> bytes:
    return line.replace(b'"9144897"', b'"9144898"', 1)


def test_file_modified_event(exported: list[bytes], signer: AuditSigner) -> None:
    exported[at(42)] = altered(exported[at(42)])
    assert_fails(check(exported, signer), Problem.ALTERED, 42)


def test_file_modified_event_with_its_leaf_recomputed(exported: list[bytes], signer: AuditSigner) -> None:
    event, _, seq = parse(altered(exported[at(42)]))
    exported[at(42)] = entry_line(event, seq, entry_leaf(event, seq))
    report = check(exported, signer)
    assert_fails(report, Problem.ROOT_MISMATCH, 40)
    assert report.window == (40, 50)
    assert report.signed_size == 40


def test_file_deleted_entry(exported: list[bytes], signer: AuditSigner) -> None:
    del exported[at(42)]
    assert_fails(check(exported, signer), Problem.MISSING, 42)


def test_file_deleted_entry_and_renumbered(exported: list[bytes], signer: AuditSigner) -> None:
    del exported[at(42)]
    for seq in range(42, SIZE - 1):
        event, leaf, _ = parse(exported[at(seq)])
        exported[at(seq)] = entry_line(event, seq, leaf)
    assert_fails(check(exported, signer), Problem.MISSING, 42)


def test_file_swapped_lines(exported: list[bytes], signer: AuditSigner) -> None:
    exported[at(42)], exported[at(43)] = exported[at(43)], exported[at(42)]
    assert_fails(check(exported, signer), Problem.REORDERED, 42)


def test_file_swapped_events_keeping_the_numbers(exported: list[bytes], signer: AuditSigner) -> None:
    (e42, l42, _), (e43, l43, _) = parse(exported[at(42)]), parse(exported[at(43)])
    exported[at(42)], exported[at(43)] = entry_line(e43, 42, l43), entry_line(e42, 43, l42)
    assert_fails(check(exported, signer), Problem.REORDERED, 42)


def test_file_duplicated_entry(exported: list[bytes], signer: AuditSigner) -> None:
    exported.insert(at(43), exported[at(42)])
    assert_fails(check(exported, signer), Problem.INSERTED, 42)


def test_file_inserted_forged_entry_and_renumbered(exported: list[bytes], signer: AuditSigner) -> None:
    forged = orjson.dumps(build_audit_event(facts(4242)), option=orjson.OPT_SORT_KEYS)
    for seq in range(SIZE - 1, 41, -1):
        event, leaf, _ = parse(exported[at(seq)])
        exported[at(seq)] = entry_line(event, seq + 1, leaf)
    exported.insert(at(42), entry_line(forged, 42, entry_leaf(forged, 42)))
    assert_fails(check(exported, signer), Problem.INSERTED, 42)


def test_file_truncated_tail(exported: list[bytes], signer: AuditSigner) -> None:
    report = check(exported[:-3], signer)
    assert_fails(report, Problem.TRUNCATED, 92)
    assert report.signed_size == 90


def test_file_without_checkpoints_is_caught_by_a_trusted_checkpoint(
    exported: list[bytes], log: AuditLog, signer: AuditSigner
) -> None:
    stripped = [exported[0], *exported[at(0) : at(SIZE - 3)]]
    lax = check(stripped, signer)
    assert lax.ok
    assert (lax.signed_size, lax.unsigned) == (0, SIZE - 3)  # nothing is proven
    latest = log.latest_checkpoint(TENANT)
    assert latest is not None
    assert_fails(check(stripped, signer, trusted=latest.note), Problem.TRUNCATED, SIZE - 3)
    assert check(exported, signer, trusted=latest.note).ok


def test_file_forged_checkpoint(exported: list[bytes], signer: AuditSigner) -> None:
    note = orjson.loads(exported[3])["checkpoint"]
    body = CheckpointBody.parse(note.split("\n\n")[0] + "\n")
    other = CheckpointBody.parse(orjson.loads(exported[4])["checkpoint"].split("\n\n")[0] + "\n")
    forged_root = note.replace(note.split("\n")[2], base64.b64encode(other.root).decode())
    for forged in (
        forged_root,  # another root under the old signature
        AuditSigner.generate().sign(body),  # signed by a key that is not pinned
        signer.sign(CheckpointBody(f"dho-share/audit/{OTHER_TENANT}", body.size, body.root)),  # another log
    ):
        tampered = list(exported)
        tampered[3] = checkpoint_line(forged)
        assert_fails(check(tampered, signer), Problem.FORGED_CHECKPOINT, None)


def test_file_checkpoints_that_disagree(exported: list[bytes], signer: AuditSigner, log: AuditLog) -> None:
    # a second, validly signed checkpoint of size 30 with another root: the log forked
    other = signer.sign(CheckpointBody(log.origin_of(TENANT), 30, log.root_at(TENANT, 31)))
    tampered = [*exported[:4], checkpoint_line(other), *exported[4:]]
    assert_fails(check(tampered, signer), Problem.FORGED_CHECKPOINT, None)


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: lines.__setitem__(at(42), b"not json\n"),
        lambda lines: lines.__setitem__(at(42), lines[at(42)].replace(b'"seq":42}', b'"seq":042}')),
        lambda lines: lines.__setitem__(
            at(42), lines[at(42)].replace(b',"leaf":"', b',"leaf":"zz', 1)[:-4] + b"\n"
        ),
        lambda lines: lines.insert(at(42), checkpoint_line("x")),
        lambda lines: lines.__setitem__(0, b"{}\n"),
    ],
)
def test_file_malformed(
    exported: list[bytes], signer: AuditSigner, damage: Callable[[list[bytes]], None]
) -> None:
    damage(exported)
    report = check(exported, signer)
    assert (report.ok, report.problem) == (False, Problem.MALFORMED)


def test_empty_and_foreign_input(signer: AuditSigner) -> None:
    assert check([], signer).problem is Problem.MALFORMED
    header = header_line("dho-share/audit/x", 0, [])
    assert check([header], signer).ok  # an empty log


def test_a_partial_export_with_a_forged_range(log: AuditLog, signer: AuditSigner) -> None:
    fill(log, 35)
    log.drain()
    lines = list(log.export(TENANT, from_seq=12))
    head = orjson.loads(lines[0])
    head["range"][0] = "00" * 32
    lines[0] = orjson.dumps(head) + b"\n"
    report = check(lines, signer)
    assert_fails(report, Problem.ROOT_MISMATCH, 12)
    assert report.window == (12, 20)


# -- an edited database -----------------------------------------------------------------------------


def export_again(log: AuditLog) -> list[bytes]:
    return list(log.export(TENANT))


def test_db_modified_event(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    with tampering(log.engine) as conn:
        event = conn.execute(select(e.c.event).where(e.c.seq == 42)).scalar_one()
        conn.execute(update(e).where(e.c.seq == 42).values(event=altered(bytes(event))))
    assert_fails(check(export_again(log), signer), Problem.ALTERED, 42)


def test_db_modified_event_and_leaf(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    with tampering(log.engine) as conn:
        event = altered(bytes(conn.execute(select(e.c.event).where(e.c.seq == 42)).scalar_one()))
        conn.execute(update(e).where(e.c.seq == 42).values(event=event, leaf=entry_leaf(event, 42)))
    report = check(export_again(log), signer)
    assert_fails(report, Problem.ROOT_MISMATCH, 40)
    assert report.window == (40, 50)


def test_db_deleted_event(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    with tampering(log.engine) as conn:
        conn.execute(e.delete().where(e.c.seq == 42))
    assert_fails(check(export_again(log), signer), Problem.MISSING, 42)


def test_db_reordered_events(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    with tampering(log.engine) as conn:
        conn.execute(update(e).where(e.c.seq == 42).values(seq=-1))
        conn.execute(update(e).where(e.c.seq == 43).values(seq=42))
        conn.execute(update(e).where(e.c.seq == -1).values(seq=43))
    assert_fails(check(export_again(log), signer), Problem.REORDERED, 42)


def test_db_inserted_event(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    forged = orjson.dumps(build_audit_event(facts(4242)), option=orjson.OPT_SORT_KEYS)
    with tampering(log.engine) as conn:
        row = conn.execute(select(e).where(e.c.seq == 42)).one()._asdict()
        conn.execute(update(e).where(e.c.seq >= 42).values(seq=-e.c.seq - 1))  # make room (unique index)
        conn.execute(update(e).where(e.c.seq < 0).values(seq=-e.c.seq))
        row.update(id=None, seq=42, event=forged, leaf=entry_leaf(forged, 42))
        del row["id"]
        conn.execute(e.insert().values(**row))
    assert_fails(check(export_again(log), signer), Problem.INSERTED, 42)


def test_db_truncated_tail(exported: list[bytes], log: AuditLog, signer: AuditSigner) -> None:
    with tampering(log.engine) as conn:
        conn.execute(e.delete().where(e.c.seq >= 92))
    assert_fails(check(export_again(log), signer), Problem.TRUNCATED, 92)
