"""``dho-share audit ...``: sequence, export, verify and review the audit log (product.md §7).

The database comes from the settings (``DHO_DATABASE_URL``); the checkpoint signing key from ``--key``
or ``DHO_AUDIT_KEY_PATH`` (default ``var/audit-signing-key.pem``, made on first use, never in the
repository); the name prefix of new logs from ``--origin`` or ``DHO_AUDIT_ORIGIN``, by default
``dho-share.<public host>/audit`` as the API uses. A log's name is stored in the database when the log
is created and every later checkpoint is signed under it, whatever the prefix or URL is then. Also runnable as
``python -m sharing_api.audit.cli``.

Exit status: ``verify`` exits 1 when the export fails verification, 0 otherwise.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import click
import orjson
from rich.console import Console
from rich.table import Table

from sharing_api.audit.checkpoints import AuditSigner, load_public_key
from sharing_api.audit.control import FIELDS, AgreementPeriod, LogControlReport
from sharing_api.audit.log import AuditLog
from sharing_api.audit.verify import VerificationReport, verify

__all__ = ["DEFAULT_KEY_PATH", "audit"]

DEFAULT_KEY_PATH = Path("var") / "audit-signing-key.pem"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
err = Console(stderr=True)

key_option = click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DHO_AUDIT_KEY_PATH",
    default=DEFAULT_KEY_PATH,
    show_default=True,
    help="Ed25519 private key (PEM) that signs checkpoints; made on first use",
)
origin_option = click.option(
    "--origin",
    envvar="DHO_AUDIT_ORIGIN",
    default=None,
    help="Name prefix of new logs (<origin>/<tenant>); default dho-share.<public host>/audit, as the API",
)


def _database_url() -> str:
    from sharing_api.settings import Settings

    return Settings().database_url


def _origin(given: str | None) -> str:
    """The origin the API process signs with (``create_app``: ``<public URL>/audit``), unless given."""
    if given:
        return given
    from sharing_api.settings import Settings

    return Settings().audit_log_origin


def _log(key_path: Path | None, origin: str | None, **options: Any) -> AuditLog:
    from sharing_api.store.engine import make_engine

    signer = AuditSigner.load_or_create(key_path) if key_path is not None else None
    return AuditLog(make_engine(_database_url()), signer=signer, origin=_origin(origin), **options)


@click.group()
def audit() -> None:
    """The tamper-evident audit log: sequence, export, verify, report."""


@audit.command()
@click.option("--tenant", help="Only this tenant's log (default: every tenant with pending entries)")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1), help="Entries per batch")
@click.option("--loop", is_flag=True, help="Keep running, polling for new entries")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.01), help="Poll seconds")
@click.option("--checkpoint-every", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--checkpoint-interval", default=60.0, show_default=True, type=click.FloatRange(0))
@key_option
@origin_option
def sequence(
    tenant: str | None,
    batch: int,
    loop: bool,
    interval: float,
    checkpoint_every: int,
    checkpoint_interval: float,
    key_path: Path,
    origin: str | None,
) -> None:
    """Give pending entries their index and sign checkpoints; once, or with --loop as a service."""
    from sharing_api.audit.sequencer import run

    log = _log(key_path, origin, checkpoint_every=checkpoint_every, checkpoint_interval=checkpoint_interval)
    try:
        done = run(log, tenant=tenant, max_batch=batch, loop=loop, interval=interval)
    except KeyboardInterrupt:
        return
    finally:
        log.engine.dispose()
    err.print(f"sequenced {done} entries")


@audit.group()
def partitions() -> None:
    """The audit table's monthly partitions (PostgreSQL; SQLite has one table and nothing to do)."""


@partitions.command(name="ensure")
@click.option("--ahead", default=3, show_default=True, type=click.IntRange(0, 120), help="Months ahead")
def partitions_ensure(ahead: int) -> None:
    """Create the partitions of this month and of the next AHEAD months (cron or a deploy step; every
    polling sequencer does this hourly too)."""
    log = _log(None, "-")
    try:
        created = log.ensure_partitions(ahead)
        status = log.partition_status(ahead)
    finally:
        log.engine.dispose()
    if status is None:
        err.print("audit_entries is not partitioned here (SQLite): nothing to do")
        return
    err.print(f"created {len(created)}: {', '.join(str(m) for m in created) or 'none'}; {status.detail}")


@partitions.command(name="check")
@click.option("--ahead", default=1, show_default=True, type=click.IntRange(0, 120), help="Months ahead")
def partitions_check(ahead: int) -> None:
    """Exit 1 when this month or one of the next AHEAD months has no partition (for monitoring: a
    missing next month is an alarm a month before appends of that month would fail with 503)."""
    log = _log(None, "-")
    try:
        status = log.partition_status(ahead)
    finally:
        log.engine.dispose()
    if status is None:
        click.echo("ok: audit_entries is not partitioned here (SQLite)")
        return
    click.echo(status.detail)
    if status.missing:
        sys.exit(1)


@audit.command()
@click.argument("tenant")
@click.option("--from", "from_seq", default=0, type=click.IntRange(0), help="First index")
@click.option("--to", "to_seq", type=click.IntRange(0), help="End index (exclusive); default: all")
@click.option("--output", "-o", type=click.File("wb"), default="-", help="NDJSON file (default stdout)")
@click.option(
    "--sequence/--no-sequence", "sequence_first", default=True, help="Sequence pending entries first"
)
@key_option
@origin_option
def export(
    tenant: str,
    from_seq: int,
    to_seq: int | None,
    output: IO[bytes],
    sequence_first: bool,
    key_path: Path,
    origin: str | None,
) -> None:
    """Write TENANT's log as NDJSON (header, checkpoints, entries) for offline verification."""
    log = _log(key_path if sequence_first else None, origin)
    try:
        if sequence_first:
            log.drain(tenant)
            log.checkpoint(tenant)  # so that every exported entry is covered by a signature
        lines = 0
        for line in log.export(tenant, from_seq, to_seq):
            output.write(line)
            lines += 1
        name = log.log_name(tenant)
    finally:
        log.engine.dispose()
    err.print(f"exported {max(0, lines - 1)} lines of {name}")


@audit.command(name="public-key")
@click.option(
    "--key",
    "key_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DHO_AUDIT_KEY_PATH",
    default=DEFAULT_KEY_PATH,
    show_default=True,
    help="Ed25519 private key (PEM) that signs checkpoints",
)
@click.option("--create", is_flag=True, help="Make a new key when there is none (a new log identity)")
def public_key(key_path: Path, create: bool) -> None:
    """Print the checkpoint key's public half (PEM) and C2SP verifier key, for auditors to pin.

    Refuses when there is no key at the path (unless --create): a key made here would not be the one
    the server signs with, and verifying with it would read as tampering."""
    if not key_path.exists() and not create:
        raise click.ClickException(
            f"no audit key at {key_path} (the server signs with DHO_AUDIT_KEY_PATH; --create makes one)"
        )
    signer = AuditSigner.load_or_create(key_path)
    click.echo(signer.public_key_pem().decode("ascii"), nl=False)
    click.echo(signer.verifier.vkey())


def _print_verification(report: VerificationReport, column: str | None = None) -> None:
    table = Table(show_header=False)
    table.add_row("log", report.origin or "?")
    problem = report.problem or ("column" if column else None)
    table.add_row("result", "[green]ok[/green]" if report.ok else f"[red]FAILED: {problem}[/red]")
    if not report.ok:
        table.add_row("first bad index", "-" if report.index is None else str(report.index))
        if column:
            table.add_row("column", column)
        if report.window:
            table.add_row("window", f"[{report.window[0]}, {report.window[1]})")
        table.add_row("detail", report.detail)
    table.add_row("entries checked", str(report.entries))
    table.add_row("checkpoints matched", str(report.checkpoints))
    table.add_row("signed size", str(report.signed_size))
    table.add_row("unsigned entries", str(report.unsigned))
    Console().print(table)


@audit.command(name="verify")
@click.argument("export_file", type=click.File("rb"), required=False)
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Pinned public key: PEM or C2SP verifier key (default: the public half of --key)",
)
@click.option(
    "--trusted",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A signed checkpoint you already trust; the export must reach and match it",
)
@click.option(
    "--database",
    "tenant",
    default=None,
    metavar="TENANT",
    help="Check TENANT's log in the database instead of an export: the tree and every search column",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON")
@key_option
def verify_command(
    export_file: IO[bytes] | None,
    public_key_file: Path | None,
    trusted: Path | None,
    tenant: str | None,
    as_json: bool,
    key_path: Path,
) -> None:
    """Verify an NDJSON export (EXPORT_FILE, '-' for stdin), or with --database a tenant's stored log,
    against the pinned checkpoint key."""
    if (export_file is None) == (tenant is None):
        raise click.UsageError("give an EXPORT_FILE or --database TENANT (one of them)")
    if public_key_file is not None:
        verifier = load_public_key(public_key_file.read_bytes())
    else:
        verifier = AuditSigner.load(key_path).verifier
    trusted_note = trusted.read_text() if trusted else None
    column: str | None = None
    if tenant is not None:
        from sharing_api.audit.stored_check import check_stored_log

        log = _log(None, None)
        try:
            stored = check_stored_log(log, tenant, verifier, trusted=trusted_note)
        finally:
            log.engine.dispose()
        report, column = stored.tree, stored.column
        if column is not None:
            report = replace(report, ok=False, index=stored.index, detail=stored.detail)
    else:
        assert export_file is not None
        report = verify(export_file, verifier, trusted=trusted_note)
    if as_json:
        out = {
            "ok": report.ok,
            "origin": report.origin,
            "start": report.start,
            "entries": report.entries,
            "checkpoints": report.checkpoints,
            "signed_size": report.signed_size,
            "unsigned": report.unsigned,
            "problem": report.problem.value if report.problem else ("column" if column else None),
            "index": report.index,
            "column": column,
            "window": list(report.window) if report.window else None,
            "detail": report.detail,
        }
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_verification(report, column)
    sys.exit(0 if report.ok else 1)


def _moment(value: str, zone: tzinfo) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 date or date-time") from exc
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=zone)


def _agreements(tenant: str) -> list[AgreementPeriod]:
    """The tenant's sharing agreements as (consumer, valid from, valid to) periods."""
    from sqlalchemy import select

    from sharing_api.store.engine import make_engine
    from sharing_api.store.schema import agreements

    engine = make_engine(_database_url())
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(agreements.c.consumer, agreements.c.valid_from, agreements.c.valid_to).where(
                    agreements.c.controller == tenant
                )
            ).all()
    finally:
        engine.dispose()
    return [
        (
            r.consumer,
            _EPOCH + timedelta(microseconds=r.valid_from),
            None if r.valid_to is None else _EPOCH + timedelta(microseconds=r.valid_to),
        )
        for r in rows
    ]


REPORT_COLUMNS = ("recorded", *FIELDS)
"""The columns of ``audit report --format table|csv``: when (in --tz), then the finding's fields."""


def _report_rows(report: LogControlReport, zone: tzinfo) -> list[list[str]]:
    rows = []
    for f in report.findings:
        when = f.recorded.astimezone(zone).isoformat(timespec="seconds") if f.recorded else ""
        values = [getattr(f, name) for name in FIELDS]
        rows.append([when, *("" if v is None else str(v) for v in values)])
    return rows


def _print_report(report: LogControlReport, zone: tzinfo) -> None:
    from sharing_api.tables import print_rows

    summary = (
        f"log control of {report.tenant}, {report.date_from.astimezone(zone).isoformat()} to "
        f"{report.date_to.astimezone(zone).isoformat()}: {report.entries} entries; "
        + ", ".join(f"{kind} {count}" for kind, count in report.totals.items())
    )
    print_rows(REPORT_COLUMNS, _report_rows(report, zone), title=summary)


def _write_csv(report: LogControlReport, zone: tzinfo) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    writer.writerows(_report_rows(report, zone))


@audit.command()
@click.argument("tenant")
@click.option("--from", "date_from", required=True, help="Start (ISO date or date-time, inclusive)")
@click.option("--to", "date_to", required=True, help="End (ISO date or date-time, exclusive)")
@click.option(
    "--tz",
    default="Europe/Oslo",
    show_default=True,
    help="Time zone of the times printed and of dates given without one",
)
@click.option(
    "--volume-threshold",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Flag a health worker who read more distinct patients than this",
)
@click.option(
    "--request-threshold",
    default=500,
    show_default=True,
    type=click.IntRange(1),
    help="Flag a health worker who made more reads than this",
)
@click.option("--no-agreements", is_flag=True, help="Skip the check against sharing agreements")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table (TSV through a pipe), CSV or JSON",
)
@click.option("--json", "as_json", is_flag=True, help="The same as --format json")
def report(
    tenant: str,
    date_from: str,
    date_to: str,
    tz: str,
    volume_threshold: int,
    request_threshold: int,
    no_agreements: bool,
    output_format: str,
    as_json: bool,
) -> None:
    """Log-control findings of TENANT: emergency access, denied attempts (and why), unusual volume,
    reads outside an agreement; with the organisation, the health worker and the patient."""
    try:
        zone = ZoneInfo(tz)
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise click.BadParameter(f"no time zone {tz!r} (e.g. Europe/Oslo, UTC)", param_hint="'--tz'") from exc
    start, end = _moment(date_from, zone), _moment(date_to, zone)
    log = _log(None, "report")  # nothing is signed here: the origin does not matter
    try:
        result = log.report(
            tenant,
            start,
            end,
            volume_threshold=volume_threshold,
            request_threshold=request_threshold,
            agreements=None if no_agreements else _agreements(tenant),
            sequence_first=False,
        )
    finally:
        log.engine.dispose()
    if as_json or output_format == "json":
        click.echo(orjson.dumps(result.to_json(zone), option=orjson.OPT_INDENT_2).decode())
    elif output_format == "csv":
        _write_csv(result, zone)
    else:
        _print_report(result, zone)


if __name__ == "__main__":
    audit()
