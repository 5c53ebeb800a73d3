"""Running the sequencer: until nothing is pending, or as a service that polls (``dho-share audit sequence``).

Any number of these may run at once, in any number of processes, against one database; they serialise
per tenant on the tenant's head row (``log``). A polling sequencer (``loop=True``, as every API worker
runs one) does not queue behind another that holds a tenant's head (``FOR UPDATE SKIP LOCKED``): that
one is doing the work, and each batch is one set-based UPDATE, so request-path appends never wait on
sequencing. Killing one at any moment is safe (AUD-09): the batch it was writing rolls back and the
next run sequences those entries again.

A polling sequencer also keeps the audit table's monthly partitions ``AHEAD`` months ahead
(PostgreSQL, ``store.audit_partitions``): when it starts and every ``PARTITION_CHECK`` seconds after. A
failed attempt (the table was busy for longer than the lock timeout, or the database is down) is
retried after ``PARTITION_RETRY`` seconds and never stops sequencing; ``/readyz`` and ``dho-share audit
partitions check`` report a month that is still missing.

**Cost.** A batch costs the database a fixed part, its statements and commit (about 2 ms of backend
CPU), and about 50 µs per entry (BENCHMARKS.md, issue 12 sixth pass). So a polling sequencer runs its
next batch at once only after a full one (``max_batch`` entries: a backlog); after a partial batch,
which took every entry then pending, it waits ``interval`` seconds. Going straight on after every
non-empty batch made it sequence one or two entries per batch under steady traffic, a batch per
request: most of the database's CPU per request. An entry now waits up to about ``interval`` seconds
for its index under traffic too, as it did after a quiet spell; ``search`` and ``report`` sequence the
tenant's pending entries first, so no reader sees the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from sharing_api.audit.log import AuditLog

__all__ = ["PARTITION_CHECK", "PARTITION_RETRY", "run"]

PARTITION_CHECK = 3600.0
PARTITION_RETRY = 60.0


def run(
    log: AuditLog,
    *,
    tenant: str | None = None,
    max_batch: int = 1000,
    loop: bool = False,
    interval: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    observe: Callable[[str, int], None] | None = None,
    wait: bool | None = None,
) -> int:
    """Sequence batches of ``tenant`` (or of every tenant) until none is pending; with ``loop``, then poll
    every ``interval`` seconds until ``should_stop()``. Returns the number of entries sequenced.

    ``observe(what, n)`` is told ``("batch", 0)`` before each batch and ``("done", n)`` after it.
    ``wait`` (default: not when polling) waits for a tenant another sequencer holds instead of skipping it.
    """
    queue = not loop if wait is None else wait
    total = 0
    partitions_due = time.monotonic()
    while not should_stop():
        if loop and time.monotonic() >= partitions_due:
            try:
                log.ensure_partitions()
                partitions_due = time.monotonic() + PARTITION_CHECK
            except SQLAlchemyError:  # reported by /readyz; sequencing must go on
                partitions_due = time.monotonic() + PARTITION_RETRY
        if observe is not None:
            observe("batch", 0)
        n = log.sequence(tenant, max_batch=max_batch, wait=queue)
        if observe is not None:
            observe("done", n)
        total += n
        if n >= max_batch or (n and not loop):
            continue  # a full batch: more may be pending (a polling sequencer's backlog, or a drain)
        if not loop:
            break
        time.sleep(interval)
    return total
