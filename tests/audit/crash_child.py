"""The sequencer process that the AUD-09 tests kill with SIGKILL (started by a forkserver)."""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path

from sharing_api.audit.checkpoints import AuditSigner
from sharing_api.audit.log import AuditLog
from sharing_api.audit.sequencer import run
from sharing_api.store.engine import make_engine

CHECKPOINT_EVERY = 37  # not a divisor of any batch size, so checkpoints fall inside batches too


def sequence(database_url: str, key_path: str, tenant: str, batch: int, pipe: Connection) -> None:
    """Sequence ``tenant`` in batches of ``batch`` until nothing is pending, reporting on ``pipe``."""
    engine = make_engine(database_url, pool_size=1)
    log = AuditLog(
        engine,
        signer=AuditSigner.load(Path(key_path)),
        checkpoint_every=CHECKPOINT_EVERY,
        checkpoint_interval=3600,
    )
    pipe.send(("ready", 0))
    run(log, tenant=tenant, max_batch=batch, observe=lambda what, n: pipe.send((what, n)))
    pipe.send(("finished", 0))
    engine.dispose()
