"""AUD-09: SIGKILL the sequencer mid-batch, again and again; after restart there is no duplicate index, no
gap, and the root verifies against every signed checkpoint.

What runs here, per backend (SQLite and PostgreSQL):

* ``test_sigkill_the_sequencer_mid_batch``: ``KILLS`` sequencer processes, one after another, each
  killed with SIGKILL at a random moment (0-40 ms, or 40-300 ms for 30% of them) after it reported
  starting its first batch, over batches of
  random size (20-200 entries, checkpoints every 37 entries inside batches). The processes are forked
  from a forkserver that has already imported SQLAlchemy, psycopg and the audit package: a fresh
  ``python -m`` costs ~0.6 s of imports here, which would allow only a handful of kills in the time
  budget. After every kill the log's invariants are checked; at the end the log is drained and fully
  verified. The test also counts how many kills hit a process between "batch started" and "batch
  done" and requires that most did.
* ``test_sigkill_the_cli_sequencer``: ``CLI_KILLS`` real ``python -m sharing_api.audit.cli sequence``
  subprocesses, each killed while it is making progress, then the same checks.
* ``test_sequencers_in_several_processes_at_once``: three sequencer processes at once on one log.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import subprocess
import sys
import time
from multiprocessing.context import ForkServerContext
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.log import AuditLog
from sharing_api.audit.merkle import CompactRange
from sharing_api.audit.verify import verify
from sharing_api.store.schema import audit_entries, audit_heads
from tests.audit import crash_child
from tests.audit.factories import TENANT, bulk_pending
from tests.audit.test_log import assert_dense_and_hashed

KILLS = 50  # per backend: 100 in all
CLI_KILLS = 3  # per backend
e = audit_entries
pytestmark = pytest.mark.slow  # each test starts and kills processes for seconds: scheduled first


@pytest.fixture(scope="module")
def forkserver() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        # pytest too: a forkserver child re-imports the parent's main module (python -m pytest)
        ["pytest", "sqlalchemy", "psycopg", "sharing_api.audit.sequencer", crash_child.__name__]
    )
    return ctx


def invariants(log: AuditLog) -> int:
    """Check the sequenced part of the log: dense indexes 0..n-1, each once, and the head agrees."""
    head_size = select(audit_heads.c.size).where(audit_heads.c.tenant == TENANT).scalar_subquery()
    with log.engine.connect() as conn:  # one statement: one snapshot, also while a sequencer runs
        count, distinct, top, size = conn.execute(
            select(func.count(e.c.seq), func.count(e.c.seq.distinct()), func.max(e.c.seq), head_size).where(
                e.c.tenant == TENANT
            )
        ).one()
    size = size or 0
    assert count == distinct == size, "duplicate index or head out of step"
    assert (top if top is not None else -1) == size - 1, "gap in the indexes"
    return size


def fully_verified(log: AuditLog, signer: AuditSigner, total: int) -> None:
    log.drain(TENANT)
    log.checkpoint(TENANT)
    assert_dense_and_hashed(log, TENANT, total)
    checkpoints = {cp.size: cp for cp in log.checkpoints(TENANT)}
    assert total in checkpoints
    tree = CompactRange()
    for leaf in log.leaf_hashes(TENANT, total):  # every checkpoint's root, rebuilt from the stored leaves
        tree.append(leaf)
        if tree.size in checkpoints:
            cp = checkpoints.pop(tree.size)
            assert signer.verifier.open(cp.note, origin=log.origin_of(TENANT)).root == cp.root == tree.root()
    assert not checkpoints
    report = verify(log.export(TENANT), signer.verifier)
    assert report.ok, report.detail
    assert (report.entries, report.signed_size) == (total, total)


def _batch_begun(messages: list[tuple[str, int]], *, after_commit: bool) -> bool:
    """True once the child reported a batch starting (after a committed batch, with ``after_commit``)."""
    committed = not after_commit
    for what, _ in messages:
        if what == "done":
            committed = True
        elif what == "batch" and committed:
            return True
    return False


def test_sigkill_the_sequencer_mid_batch(
    log: AuditLog, signer: AuditSigner, key_file: Path, database_url: str, forkserver: ForkServerContext
) -> None:
    rng = random.Random(20250319)
    total = 4000
    bulk_pending(log, total)
    started = time.monotonic()
    inside_batch = progressed = 0
    size = 0
    kills = 0
    while kills < KILLS:
        if size > total - 3000:  # keep a backlog, so that every process has work when it dies
            bulk_pending(log, 4000, start=total)
            total += 4000
        receiver, sender = forkserver.Pipe(duplex=False)
        batch = rng.choice([20, 50, 100, 200])
        proc = forkserver.Process(
            target=crash_child.sequence,
            args=(database_url, str(key_file), TENANT, batch, sender),
            daemon=True,
        )
        proc.start()
        sender.close()
        messages: list[tuple[str, int]] = []
        # Half the kills wait for one committed batch first, so the log provably moves forward
        # between kills however slow the machine is; every kill lands after a batch has begun.
        commit_first = rng.random() < 0.5
        while not _batch_begun(messages, after_commit=commit_first):
            assert receiver.poll(30), "the sequencer did not start"
            messages.append(receiver.recv())
        # mostly within the first batches; sometimes later, after several commits
        time.sleep(rng.uniform(0, 0.04) if rng.random() < 0.7 else rng.uniform(0.04, 0.3))
        proc.kill()
        proc.join()
        if proc.exitcode == 0:  # it ran out of work before the kill: not a kill, go again
            size = invariants(log)
            continue
        assert proc.exitcode == -9
        kills += 1
        try:
            while receiver.poll():
                messages.append(receiver.recv())
        except EOFError:
            pass
        receiver.close()
        inside_batch += messages[-1][0] == "batch"
        before, size = size, invariants(log)
        progressed += size > before
    elapsed = time.monotonic() - started
    assert inside_batch >= KILLS * 0.6, f"only {inside_batch} of {KILLS} kills hit a batch in progress"
    assert progressed >= KILLS * 0.3  # and the log still moved forward between kills
    fully_verified(log, signer, total)
    print(f"\n{KILLS} SIGKILLs ({inside_batch} mid-batch), {size} entries sequenced, {elapsed:.1f} s")


def test_sigkill_the_cli_sequencer(
    log: AuditLog, signer: AuditSigner, key_file: Path, database_url: str
) -> None:
    total = 6000
    bulk_pending(log, total)
    env = {
        **os.environ,
        "DHO_DATABASE_URL": database_url,
        "DHO_AUDIT_KEY_PATH": str(key_file),
        "DHO_AUDIT_ORIGIN": log.origin,  # one log, one name, whoever signs
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    rng = random.Random(7)
    size = 0
    for _kill in range(CLI_KILLS):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sharing_api.audit.cli",
                "sequence",
                "--batch",
                "50",
                "--checkpoint-every",
                "23",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while invariants(log) <= size:  # wait until this process commits a batch, so it is mid-run
                assert time.monotonic() < deadline, "the CLI sequencer made no progress"
                assert proc.poll() is None, "the CLI sequencer exited"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -9
        size = invariants(log)
        assert 0 < size < total
    fully_verified(log, signer, total)


def test_sequencers_in_several_processes_at_once(
    log: AuditLog, signer: AuditSigner, key_file: Path, database_url: str, forkserver: ForkServerContext
) -> None:
    total = 3000
    bulk_pending(log, total)
    pipes, procs = [], []
    for batch in (30, 70, 110):
        receiver, sender = forkserver.Pipe(duplex=False)
        proc = forkserver.Process(
            target=crash_child.sequence,
            args=(database_url, str(key_file), TENANT, batch, sender),
            daemon=True,
        )
        proc.start()
        sender.close()
        pipes.append(receiver)
        procs.append(proc)
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    done = []
    for receiver in pipes:
        while receiver.poll():
            try:
                done.append(receiver.recv())
            except EOFError:
                break
    assert sum(n for what, n in done if what == "done") == total  # each entry sequenced exactly once
    assert sum(1 for what, n in done if what == "done" and n) >= 3
    fully_verified(log, signer, total)
