"""``python -m benchmarks.audit_verify``: how fast an audit-log export verifies (product.md §6: >= 100,000/s).

It writes an export of ``--events`` AuditEvents (default 1,000,000) to a temporary file, exactly as
``AuditLog.export`` lays it out (header, signed checkpoints every ``--checkpoint-every`` entries, one
line per entry with its canonical event and leaf hash), without a database: the events are built by
``sharing_api.audit.events`` for a mix of requests (searches and reads with the sharing decision, their
AuthZconsent records, writes, refusals), and each line gets its own correlation id, token ``jti`` and
time by fixed-width substitution in the canonical bytes, which keeps them canonical. Then it times
``sharing_api.audit.verify.verify`` over the file in a fresh process (one pass, read from the file; the
file was just written, so it is mostly in the page cache), and prints events per second and that
process's peak memory.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import orjson

from sharing_api.audit.actions import AuditAction, Outcome
from sharing_api.audit.checkpoints import AuditSigner, CheckpointBody, load_public_key
from sharing_api.audit.encoding import canonical_event
from sharing_api.audit.events import AuditFacts, Coded, DecisionRef, SharingDecision, build_audit_events
from sharing_api.audit.export_format import checkpoint_line, entry_leaf, entry_line, header_line
from sharing_api.audit.tree import TreeState
from sharing_api.audit.verify import verify

TENANT = "921234562"
ORIGIN = f"dho-share.example/audit/{TENANT}"
TEMPLATES = 500
MARK = b"@@@@@@@@@@@@"  # 12 characters, replaced by the line's number in each template
T0 = datetime(2025, 3, 19, 6, 45, tzinfo=UTC)


def _facts(rng: random.Random, n: int) -> AuditFacts:
    day, month, year = rng.randint(1, 28), rng.randint(81, 92), rng.randint(0, 99)
    patient = f"{day:02d}{month:02d}{year:02d}{rng.randint(0, 99999):05d}"  # synthetic: month + 80
    base = AuditFacts(
        action=AuditAction.OBSERVATION_SEARCH,
        outcome=Outcome.SUCCESS,
        recorded=T0 + timedelta(seconds=n),
        tenant=TENANT,
        client_id=rng.choice(["ous-dips-epj", "ahus-dips-epj", "legekontor-cgm"]),
        organisation=rng.choice(["993467049", "983971636", "974589095"]),
        point_of_care="874716782",
        practitioner_hpr=str(rng.randint(1_000_000, 9_999_999)),
        practitioner_name="August September",
        purpose_of_use=rng.choices(["TREAT", "COC", "ETREAT", "BTG"], [85, 12, 2, 1])[0],
        purpose_of_use_details=Coded(system="urn:oid:2.16.578.1.12.4.1.1.9151", code="15"),
        decision_ref=DecisionRef(id=f"{rng.getrandbits(64):016X}", user_selected=False),
        attested_at=T0,
        patient=("urn:oid:2.16.578.1.12.4.1.4.1", patient),
        query=f"POST /{TENANT}/fhir/Observation/_search\n\npatient={patient}&code=8867-4".encode(),
        data_categories=("vital-signs",),
        resources=tuple(f"Observation/{rng.getrandbits(128):032x}" for _ in range(rng.choice([1, 3, 12]))),
        decision=SharingDecision(
            permit=True, reasons=("PERMIT_AGREEMENT",), used=("SharingAgreement/ag-17",)
        ),
        token_jti="jti-" + MARK.decode(),
        correlation_id="req-" + MARK.decode(),
        source_address=f"10.20.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        server="https://dho.kommune.example",
    )
    kind = rng.random()
    if kind < 0.25:
        return replace(base, action=AuditAction.OBSERVATION_READ, query=None, resources=base.resources[:1])
    if kind < 0.32:
        return replace(
            base, action=AuditAction.OBSERVATION_CREATE, query=None, decision=None, purpose_of_use=None
        )
    if kind < 0.36:
        return replace(
            base,
            outcome=Outcome.MINOR_FAILURE,
            resources=(),
            decision=SharingDecision(permit=False, reasons=("DENY_RESERVATION",), used=("Consent/r-3",)),
        )
    return base


def templates(seed: int) -> list[bytes]:
    """Canonical AuditEvents with ``MARK`` where each line's own ids go."""
    rng = random.Random(seed)
    out: list[bytes] = []
    while len(out) < TEMPLATES:
        for event in build_audit_events(_facts(rng, len(out))):
            data = canonical_event(event)
            if MARK in data:
                out.append(data)
    return out


def write_export(path: Path, count: int, checkpoint_every: int, signer: AuditSigner) -> float:
    """Write an export of ``count`` entries to ``path``; returns the mean event size in bytes."""
    pool = templates(seed=count)
    tree = TreeState()
    leaves: list[bytes] = []
    notes: list[str] = []
    size_sum = 0
    for seq in range(count):
        event = pool[seq % TEMPLATES].replace(MARK, b"%012d" % seq)
        size_sum += len(event)
        leaf = entry_leaf(event, seq)
        leaves.append(leaf)
        tree.append(leaf)
        if tree.size % checkpoint_every == 0 or tree.size == count:
            notes.append(signer.sign(CheckpointBody(ORIGIN, tree.size, tree.root())))
    with path.open("wb", buffering=1 << 20) as f:
        f.write(header_line(ORIGIN, 0, []))
        for note in notes:
            f.write(checkpoint_line(note))
        for seq, leaf in enumerate(leaves):
            f.write(entry_line(pool[seq % TEMPLATES].replace(MARK, b"%012d" % seq), seq, leaf))
    return size_sum / count


def verify_file(path: Path, public_key: Path) -> dict[str, float]:
    """Verify ``path`` in this process; what it took (run in a fresh process, so RSS is verification's)."""
    verifier = load_public_key(public_key.read_bytes())
    started = time.perf_counter()
    with path.open("rb") as f:
        report = verify(f, verifier)
    elapsed = time.perf_counter() - started
    if not report.ok:
        raise click.ClickException(f"verification failed: {report}")
    return {
        "entries": report.entries,
        "signed_size": report.signed_size,
        "seconds": elapsed,
        "max_rss_mb": _peak_mb(),
    }


def _peak_mb() -> float:
    """This process's peak resident memory. On Linux ``VmHWM``: ``ru_maxrss`` would also count the
    parent's memory from before ``exec``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@click.command()
@click.option("--events", default=1_000_000, show_default=True, type=click.IntRange(1))
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--keep", type=click.Path(dir_okay=False, path_type=Path), help="Keep the export at this path")
@click.option("--verify-only", type=click.Path(exists=True, dir_okay=False, path_type=Path), hidden=True)
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), hidden=True)
def main(
    events: int, checkpoint_every: int, keep: Path | None, verify_only: Path | None, public_key: Path | None
) -> None:
    """Build an export of EVENTS audit events and time its verification in a fresh process."""
    if verify_only is not None and public_key is not None:
        click.echo(orjson.dumps(verify_file(verify_only, public_key)).decode())
        return
    signer = AuditSigner.generate()
    with tempfile.TemporaryDirectory(prefix="dho-audit-bench-") as tmp:
        path = keep or Path(tmp) / "audit-export.ndjson"
        pem = Path(tmp) / "pinned.pem"
        pem.write_bytes(signer.public_key_pem())
        started = time.perf_counter()
        mean = write_export(path, events, checkpoint_every, signer)
        built = time.perf_counter() - started
        megabytes = path.stat().st_size / 1e6
        click.echo(
            f"export: {events:,} events (mean {mean:,.0f} bytes canonical), "
            f"{-(-events // checkpoint_every):,} checkpoints, {megabytes:,.0f} MB, built in {built:.1f} s"
        )
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.audit_verify",
                "--verify-only",
                str(path),
                "--public-key",
                str(pem),
            ],
            check=True,
            capture_output=True,
        )
        result = orjson.loads(child.stdout.splitlines()[-1])
        if (result["entries"], result["signed_size"]) != (events, events):
            raise click.ClickException(f"verification covered {result}, not {events} events")
        rate = events / result["seconds"]
        click.echo(
            f"verify: {events:,} events in {result['seconds']:.2f} s = {rate:,.0f} events/s "
            f"({megabytes / result['seconds']:,.0f} MB/s; target >= 100,000/s: "
            f"{'met' if rate >= 100_000 else 'NOT met'}); verifier process peak RSS "
            f"{result['max_rss_mb']:,.0f} MB; {os.cpu_count()} CPUs"
        )


if __name__ == "__main__":
    main()
