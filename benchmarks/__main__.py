"""``python -m benchmarks``: ingest and search throughput of dho-share over HTTP, against product.md §6.

One run: a fresh database (migrated, one tenant), the API under granian (``--server gunicorn``: gunicorn)
on a free loopback port,
then (1) ingest of synthetic measurements as batch Bundles, (2) ``GET /healthz`` as a baseline of
what the framework alone costs, (3) search for one patient, one code and a period (12 hits). The
server is stopped and the database dropped at the end, also after an error.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
from rich.console import Console

from benchmarks import diagnose, modes, report
from benchmarks.cpu import CpuProbe
from benchmarks.environment import (
    TENANT,
    Dataset,
    Server,
    analyze,
    api_server,
    database_version,
    fresh_database,
    make_dataset,
    search_forms,
)
from benchmarks.load import Connection, OnDemand, count_created, request_bytes, run_load
from benchmarks.parties import FORM_URLENCODED, Credentials, form_patient, register
from sharing_api.serving import SERVERS

console = Console(stderr=True)
SEARCH_MIX = 256  # distinct searches (patient and period), cycled by every client
HITS = 12
NEEDS_AUTH = "The API refused the benchmark's requests (see the server log and BENCHMARKS.md)."


def _verify_search(port: int, requests: list[bytes]) -> list[list[str]]:
    """Every search of the mix answers 200 with ``HITS`` hits (this also warms the server up).

    Returns the ids each search found, in the order of ``requests`` (the reads by id use them)."""
    conn = Connection(port)
    found: list[list[str]] = []
    try:
        for request in requests:
            status, body = conn.roundtrip(request)
            if status in (401, 403):
                raise click.ClickException(NEEDS_AUTH)
            bundle = orjson.loads(body)
            hits = len(bundle.get("entry", []))
            if status != 200 or hits != HITS or bundle.get("total") != HITS:
                raise click.ClickException(
                    f"a warm-up search answered {status} with {hits} hits (total {bundle.get('total')}); "
                    f"expected {HITS}"
                )
            found.append([e["resource"]["id"] for e in bundle["entry"]])
    finally:
        conn.close()
    return found


def _verify_once(port: int, request: bytes, what: str) -> None:
    """``request`` answers 200 before its scenario is measured (a refusal would measure nothing)."""
    conn = Connection(port)
    try:
        status, body = conn.roundtrip(request)
    finally:
        conn.close()
    if status in (401, 403):
        raise click.ClickException(NEEDS_AUTH)
    if status != 200:
        raise click.ClickException(f"a {what} answered {status}: {body[:300]!r}")


SEARCHES_PER_CLIENT_SECOND = 400
"""Requests signed in advance per search client and second: more than one client can send."""
READS_PER_CLIENT_SECOND = 500
TOKENS_PER_CLIENT_SECOND = 1000
"""Token requests per client and second at most."""
TOKENS_SIGNED_AHEAD_PER_SECOND = 1.5 * report.TOKEN_TARGET
"""Token requests (an assertion and a proof each) signed before the clock starts, per second of the
run, over all clients."""
TOKENS_SIGNED_WITHIN = 6.0
"""Seconds the signing ahead may take at most: the last assertion signed ahead is then at most this
plus the warm-up and the window old when sent, under its 30 s lifetime."""


def _measure(
    server: Server, url: str, data: Dataset, probe: CpuProbe, options: dict[str, float]
) -> report.Results:
    """Ingest ``data``, then the baseline, then search; each phase with its own client processes."""
    port, clients, ingest_clients = server.port, int(options["clients"]), int(options["ingest_clients"])
    counted = options.get("diagnose") and url.startswith("postgresql")
    mark = (lambda: diagnose.take(url, probe)) if counted else None
    warmup, duration = options["warmup"], options["duration"]
    base = f"http://127.0.0.1:{port}"
    creds = Credentials(base, register(url, TENANT))
    console.print(f"ingest: {len(data.bundles)} Bundles over {ingest_clients} connections ...")
    creds.publisher.access_token()  # fetched once here; the client processes inherit it

    def signed_bundle(n: int) -> bytes:
        # Signed when sent: a long ingest outlives a proof's 60 s iat window.
        return creds.bundle_request(port, f"/{TENANT}/fhir", data.bundles[n])

    bundles = OnDemand(signed_bundle, range(len(data.bundles)))
    ingest = run_load(
        port,
        [bundles[i::ingest_clients] for i in range(ingest_clients)],
        repeat=False,
        warmup=0.0,
        duration=options["ingest_timeout"],
        check=count_created,
        probe=probe,
        # A Bundle the client gave up on is still committed by the server later, and would then be
        # missing from the searches that follow: wait for every answer, up to the ingest timeout.
        socket_timeout=options["ingest_timeout"],
    )
    if ingest.items == 0:
        raise click.ClickException(f"no observation was created. {NEEDS_AUTH}")
    if url.startswith("postgresql"):
        analyze(url)
    path = f"/{TENANT}/fhir/Observation/_search"
    forms = search_forms(data, SEARCH_MIX, data.seed)

    def signed(count: int, offset: int = 0) -> list[bytes]:
        # A fresh DPoP proof per request (proofs are single-use), signed before the clock starts.
        return [
            creds.search_request(port, path, f)
            for f in (forms[(offset + i) % len(forms)] for i in range(count))
        ]

    found = _verify_search(port, signed(len(forms)))
    console.print(f"baseline: GET /healthz, {clients} clients, {warmup:g} s warm-up + {duration:g} s ...")
    health = run_load(
        port,
        [[request_bytes("GET", "/healthz", port)]] * clients,
        repeat=True,
        warmup=warmup,
        duration=duration,
        probe=probe,
    )
    console.print(f"search: {clients} clients, {warmup:g} s warm-up + {duration:g} s ...")
    per_client = int(SEARCHES_PER_CLIENT_SECOND * (warmup + duration))
    search = run_load(
        port,
        [signed(per_client, i * len(forms) // clients) for i in range(clients)],
        repeat=False,
        warmup=warmup,
        duration=duration,
        probe=probe,
        mark=mark,
    )
    # Read by id: the observations the searches found, each read by the doctor whose attestation names
    # its patient (a fresh proof per request, as for search).
    targets = [(form_patient(f), obs_id) for f, ids in zip(forms, found, strict=True) for obs_id in ids[:2]]

    def reads(count: int, offset: int) -> list[bytes]:
        out = []
        for i in range(count):
            fnr, obs_id = targets[(offset + i) % len(targets)]
            out.append(creds.read_request(port, f"/{TENANT}/fhir/Observation/{obs_id}", fnr))
        return out

    _verify_once(port, reads(1, 0)[0], "read by id")
    console.print(f"read by id: {clients} clients, {warmup:g} s warm-up + {duration:g} s ...")
    per_client = int(READS_PER_CLIENT_SECOND * (warmup + duration))
    read = run_load(
        port,
        [reads(per_client, i * len(targets) // clients) for i in range(clients)],
        repeat=False,
        warmup=warmup,
        duration=duration,
        probe=probe,
        mark=mark,
    )
    # The token endpoint: the hospital's client assertion (with the attestation) and a DPoP proof,
    # both fresh per request (the assertion's jti and the proof are single-use).
    endpoint = creds.publisher.token_endpoint()
    token_path = "/" + endpoint.split("/", 3)[3]
    reader = creds.reader(data.patients[0].fnr)

    def token_request(_: int) -> bytes:
        body, headers = creds.token_request(reader, endpoint)
        return request_bytes("POST", token_path, port, body, FORM_URLENCODED, headers)

    _verify_once(port, token_request(0), "token request")
    # Signed ahead, as the searches' proofs are: what the target rate needs with room to spare, within
    # TOKENS_SIGNED_WITHIN seconds (a client assertion lives 30 s: signed longer before the window, the
    # last of the window's could expire before they are sent); more are signed as they are sent, and
    # that signing shows in the loadgen column.
    console.print(
        f"token endpoint: signing ahead, {clients} clients, {warmup:g} s warm-up + {duration:g} s ..."
    )
    per_client = int(TOKENS_PER_CLIENT_SECOND * (warmup + duration))
    ahead = int(TOKENS_SIGNED_AHEAD_PER_SECOND * (warmup + duration)) // clients
    budget = TOKENS_SIGNED_WITHIN / clients
    token = run_load(
        port,
        [OnDemand.ahead(token_request, range(per_client), ahead, budget) for _ in range(clients)],
        repeat=False,
        warmup=warmup,
        duration=duration,
        probe=probe,
        mark=mark,
    )
    for name, phase in (("search", search), ("read by id", read), ("token", token)):
        if phase.marks:
            console.print("\n".join(diagnose.report(name, *phase.marks, phase.requests, probe)))
    return report.Results(
        ingest, ingest.items, data.observations, data.bundle_size, health, search, read, token
    )


@click.command()
@click.option(
    "--database", type=click.Choice(["postgresql", "sqlite"]), default="postgresql", show_default=True
)
@click.option(
    "--postgres-url",
    default="postgresql://postgres@127.0.0.1:5432/postgres",
    show_default=True,
    help="An administrative connection; the benchmark creates and drops its own database beside it",
)
@click.option("--observations", default=100_000, show_default=True, type=click.IntRange(1))
@click.option("--bundle-size", default=500, show_default=True, type=click.IntRange(1, 1000))
@click.option("--days", default=180, show_default=True, type=click.IntRange(10), help="Days per patient")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="server processes")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="per worker")
@click.option("--reuse-port", is_flag=True, help="a socket per worker (serve --reuse-port; gunicorn)")
@click.option(
    "--server",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    help="the HTTP server (serve --server)",
)
@click.option("--ingest-clients", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--clients", default=8, show_default=True, type=click.IntRange(1, 64), help="Search clients")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(1, 600), help="Seconds")
@click.option("--warmup", default=2.0, show_default=True, type=click.FloatRange(0, 60), help="Seconds")
@click.option("--ingest-timeout", default=900.0, show_default=True, type=click.FloatRange(10, 3600))
@click.option("--seed", default=1, show_default=True, help="Random seed of the synthetic data")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--scale", is_flag=True, help="Seed in bulk through the store; search/read vs 100k (scale.py)")
@click.option(
    "--seed-processes",
    default=2,
    show_default=True,
    type=click.IntRange(1, 16),
    help="--scale/--soak: processes generating and COPYing the observations (seeding.py)",
)
@click.option(
    "--seed-indexes",
    type=click.Choice(["rebuild", "keep"]),
    default="rebuild",
    show_default=True,
    help="--scale/--soak: drop the observation tables' indexes for each load and build them after, or keep",
)
@click.option(
    "--diagnose",
    is_flag=True,
    help="also print, per phase, PostgreSQL's counts and each process's CPU per request (diagnose.py)",
)
@click.option(
    "--soak",
    type=click.FloatRange(10),
    is_flag=False,
    flag_value=1800.0,
    help="Mixed load for SECONDS, worker RSS (soak.py)",
)
def main(
    database: str,
    postgres_url: str,
    observations: int,
    bundle_size: int,
    days: int,
    workers: int,
    threads: int,
    reuse_port: bool,
    server: str,
    seed: int,
    markdown_path: Path | None,
    **options: float,
) -> None:
    """Benchmark ingest and search over HTTP on this machine (loopback only)."""
    if modes.chosen(database, postgres_url, observations, days, workers, seed, markdown_path, options):
        return
    load_before = os.getloadavg()[0]
    console.print(f"generating {observations:,} synthetic observations ...")
    try:
        data = make_dataset(observations, bundle_size, days, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--observations") from exc
    with tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp:
        log = Path(tmp) / "server.log"
        try:
            with fresh_database(database, Path(tmp), postgres_url) as url:
                db_version = database_version(url)
                with api_server(url, workers, log, threads, reuse_port, server) as api:
                    probe = CpuProbe(api.pid, url.rsplit("/", 1)[1] if database == "postgresql" else None)
                    results = _measure(api, url, data, probe, options)
        except Exception as exc:
            if not isinstance(exc, click.ClickException) and log.exists() and log.stat().st_size:
                console.print(f"[red]server log (last lines):[/red]\n{log.read_text()[-3000:]}")
            raise

    context = [
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {report.machine()}, {db_version}; "
        f"load average before the run {load_before:.2f}",
        f"- command: `{' '.join(['python -m benchmarks', *sys.argv[1:]])}`; code: {report.revision()}",
        f"- ingest: {results.created:,} of {data.observations:,} observations created (201) in "
        f"{results.ingest.seconds:.1f} s ({data.patient_count} patients x {days} days); "
        f"server: {server}, {workers} workers x {threads} threads"
        f"{' (a socket per worker: --reuse-port)' if reuse_port else ''}; search and baseline: "
        f"{int(options['clients'])} closed-loop clients, {options['warmup']:g} s warm-up, "
        f"{options['duration']:g} s measured, "
        f"{SEARCH_MIX} distinct searches",
        "- CPU: share of all cores used by the API server (its main process and workers), storage "
        "(PostgreSQL, Redis), this load generator, and the rest (kernel, other processes); CPU ms per "
        "item: server and storage CPU time per request (per observation for ingest)",
        f"- {report.server_split(results)}",
        f"- {report.host_speed(results)}",
        f"- {report.NOT_MEASURED}",
        *(f"- WARNING: {w}" for w in report.warnings(results)),
    ]
    table_rows = report.rows(results)
    report.show(table_rows, context)
    if markdown_path:
        markdown_path.write_text(report.markdown(table_rows, context))
        console.print(f"wrote {markdown_path}")
    if results.broken:
        raise SystemExit("some requests failed or some observations were not created: see the table")


if __name__ == "__main__":
    main()
