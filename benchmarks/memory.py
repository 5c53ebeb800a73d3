"""``python -m benchmarks.memory``: the soak's request mix in one process, and what its memory holds.

``benchmarks.soak`` reads each server worker's RSS; this tool answers "which allocation grows". The
app is built in this process (as a worker builds it: the audit sequencer and delivery threads run) on
a fresh database of its own, and every request goes to it as a WSGI environ: the token requests
(client assertion + DPoP proof), searches (6 in 10), reads by id (3 in 10) and batch Bundles of new
measurements (1 in 10), as the soak sends them, from ``--clients`` client systems that each hold
one token per patient and fetch a new one when it has less than 30 s left. ``--token-lifetime`` makes
tokens turn over faster than the default 300 s, so that what is kept per token shows in a short run.

Every ``--every`` requests it collects garbage and takes a ``tracemalloc`` snapshot; at the end it
prints the traced size, RSS and gc object count over time, the slope after the warm-up (bytes per
1,000 requests), the sizes of the per-process caches, and the allocation sites that grew most between
the first snapshot after the warm-up and the last.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from benchmarks.environment import TENANT, analyze, make_dataset, private_database, search_forms
from benchmarks.inprocess import Environ, _call, _environ
from benchmarks.parties import FHIR_JSON, Credentials, form_patient, register
from benchmarks.soak import BUNDLE, MIX, rss_kib
from sharing_api.seed import batches, make_patient, series

REDIS_URL = "redis://127.0.0.1:6379/11"  # not the benchmarks' database 13: runs may overlap


class InProcessTokens:
    """Access tokens from the app's own token endpoint, called in process; one per client, renewed
    when it has less than 30 s left (as ``auth.client.DhoClient.access_token`` does over HTTP)."""

    def __init__(self, app: Any, creds: Credentials, base: str):
        self.app, self.creds, self.base = app, creds, base
        _, body = _call(app, _environ("GET", "/.well-known/openid-configuration", base, []))
        self.endpoint = str(orjson.loads(body)["token_endpoint"])
        self.path = "/" + self.endpoint.split("/", 3)[3]
        self.issued = 0

    def fresh(self, client: Any) -> None:
        if client._token is not None and time.time() < client._expires - 30:
            return
        body, headers = self.creds.token_request(client, self.endpoint)
        status, answer = _call(self.app, _environ("POST", self.path, self.base, headers, body))
        if not status.startswith("200"):
            raise click.ClickException(f"the token endpoint answered {status}: {answer[:300]!r}")
        found = orjson.loads(answer)
        client._token, client._expires = found["access_token"], time.time() + int(found["expires_in"])
        self.issued += 1


def _cache_sizes(app: Any) -> dict[str, int]:
    """How many entries each per-process cache on the request path holds now."""
    from auth import _jose, dpop
    from sharing_api.fhir import dates
    from sharing_api.routes import observations

    svc = app.extensions["dho"]
    guard = svc.guard
    engine = svc.engine
    sizes = {
        "verified tokens": len(guard.verified_tokens._entries),
        "dpop proof headers": dpop._proof_header.cache_info().currsize,
        "jose parsed headers": _jose.parsed_header.cache_info().currsize,
        "dpop htu": dpop.normalise_htu.cache_info().currsize,
        "jose imported keys": _jose._imported.cache_info().currsize,
        "format negotiation": observations._acceptable.cache_info().currsize,
        "format_instant": dates.format_instant.cache_info().currsize,
        "client records": len(svc.clients._recent),
        "metrics series": len(app.extensions["dho_metrics"]._request_series),
        "sqlalchemy compiled": len(engine._compiled_cache) if engine._compiled_cache is not None else -1,
    }
    shapes = getattr(svc.observations, "_shapes", None)
    if shapes is not None:
        sizes["search shapes"] = len(shapes)
    return sizes


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        )
    )


@click.command()
@click.option("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres", show_default=True)
@click.option("--database-prefix", default="dho_perf_rss", show_default=True)
@click.option("--observations", default=5_000, show_default=True, type=click.IntRange(500))
@click.option("--requests", "count", default=6_000, show_default=True, type=click.IntRange(100))
@click.option("--warmup", default=1_500, show_default=True, help="requests before the reference snapshot")
@click.option("--every", default=500, show_default=True, help="requests between snapshots")
@click.option("--clients", default=4, show_default=True, help="client systems, each with its own tokens")
@click.option("--token-lifetime", default=60, show_default=True, type=click.IntRange(30, 3600))
@click.option("--frames", default=6, show_default=True, help="traceback depth tracemalloc keeps")
@click.option("--top", default=25, show_default=True, help="allocation sites to print")
def main(
    postgres_url: str,
    database_prefix: str,
    observations: int,
    count: int,
    warmup: int,
    every: int,
    clients: int,
    token_lifetime: int,
    frames: int,
    top: int,
) -> None:
    """Memory growth of the app over the soak's mix, in this process, with tracemalloc."""
    data = make_dataset(observations, 500, 60, 1)
    with (
        tempfile.TemporaryDirectory(prefix="dho-memory-") as tmp,
        private_database(postgres_url, database_prefix, digits=8) as url,
    ):
        base = "http://127.0.0.1:8000"
        os.environ.update(
            {
                "DHO_DATABASE_URL": url,
                "DHO_REDIS_URL": REDIS_URL,
                "DHO_PUBLIC_URL": base,
                "DHO_SEARCH_SESSION_TTL": "60",
                "DHO_SIGNING_KEYS_PATH": str(Path(tmp) / "signing-keys.json"),
                "DHO_AUDIT_KEY_PATH": str(Path(tmp) / "audit-key.pem"),
                "DHO_RATE_LIMIT": "100000000",
                "DHO_TOKEN_LIFETIME": str(token_lifetime),
                "PROMETHEUS_MULTIPROC_DIR": str(Path(tmp) / "metrics"),
            }
        )
        os.mkdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        from sharing_api.app import create_app
        from sharing_api.metrics import use_multiprocess_dir
        from sharing_api.request_log import configure_json_logging

        use_multiprocess_dir()
        keys = register(url, TENANT)
        saved_stderr = sys.stderr
        with open(Path(tmp) / "requests.log", "w") as log_file:
            sys.stderr = log_file
            try:
                configure_json_logging()
                app = create_app()
                fleet = [Credentials(base, keys) for _ in range(clients)]
                tokens = [InProcessTokens(app, c, base) for c in fleet]
                try:
                    _run(app, fleet, tokens, data, base, count, warmup, every, frames, top)
                finally:
                    app.extensions["dho_delivery"].stop()
                    # The sequencer thread cannot be stopped: silence it before the database goes.
                    logging.disable(logging.CRITICAL)
            finally:
                sys.stderr = saved_stderr


def _run(
    app: Any,
    fleet: list[Credentials],
    tokens: list[InProcessTokens],
    data: Any,
    base: str,
    count: int,
    warmup: int,
    every: int,
    frames: int,
    top: int,
) -> None:
    ingest_path = f"/{TENANT}/fhir"
    search_path = f"/{TENANT}/fhir/Observation/_search"

    def signed(i: int, client: Any, method: str, path: str) -> list[str]:
        tokens[i % len(tokens)].fresh(client)
        return Credentials.headers(client, method, base + path)

    for body in data.bundles:  # the seed, through the app
        c = fleet[0]
        status, answer = _call(
            app,
            _environ("POST", ingest_path, base, signed(0, c.publisher, "POST", ingest_path), body, FHIR_JSON),
        )
        if not status.startswith("200"):
            raise click.ClickException(f"seeding answered {status}: {answer[:300]!r}")
    analyze(os.environ["DHO_DATABASE_URL"])
    forms = search_forms(data, 256, data.seed)
    found: list[list[str]] = []
    for form in forms:
        c = fleet[0]
        headers = signed(0, c.reader(form_patient(form)), "POST", search_path)
        status, answer = _call(app, _environ("POST", search_path, base, headers, form))
        found.append([e["resource"]["id"] for e in orjson.loads(answer).get("entry", [])])
    targets = [
        (form_patient(f), ids[n])
        for f, ids in zip(forms, found, strict=True)
        for n in (0, 5, 11)
        if len(ids) > n
    ]

    def request(i: int) -> Environ:
        who = i % len(fleet)
        creds = fleet[who]
        kind = MIX[(i // len(fleet) + who * 3) % len(MIX)]
        n = i * 7919 + who
        if kind == "search":
            form = forms[n % len(forms)]
            return _environ(
                "POST",
                search_path,
                base,
                signed(who, creds.reader(form_patient(form)), "POST", search_path),
                form,
            )
        if kind == "read":
            fnr, obs_id = targets[n % len(targets)]
            path = f"/{TENANT}/fhir/Observation/{obs_id}"
            return _environ("GET", path, base, signed(who, creds.reader(fnr), "GET", path))
        rng = random.Random(f"memory-{n}")
        resources = series(make_patient(rng), TENANT, 2, rng, datetime.now(UTC))
        body = orjson.dumps(next(batches(resources, BUNDLE)))
        return _environ(
            "POST", ingest_path, base, signed(who, creds.publisher, "POST", ingest_path), body, FHIR_JSON
        )

    tracemalloc.start(frames)
    began = time.monotonic()
    rows: list[tuple[int, float, int, int, int, int, dict[str, int]]] = []
    reference: tracemalloc.Snapshot | None = None
    last: tracemalloc.Snapshot | None = None
    errors = 0
    for i in range(count + 1):
        if i % every == 0 or i == warmup:
            snap = _snapshot()
            traced = sum(s.size for s in snap.statistics("filename"))
            rss = rss_kib(os.getpid()) or 0
            rows.append(
                (
                    i,
                    time.monotonic() - began,
                    traced,
                    rss,
                    len(gc.get_objects()),
                    sum(t.issued for t in tokens),
                    _cache_sizes(app),
                )
            )
            print(
                f"request {i:,}: traced {traced / 1024:,.0f} KiB, RSS {rss:,} KiB",
                file=sys.__stdout__,
                flush=True,
            )
            if i == warmup:
                reference = snap
            last = snap
        if i == count:
            break
        status, body = _call(app, request(i))
        if not status.startswith(("200", "201")):
            errors += 1
            if errors <= 3:
                print(f"request {i} answered {status}: {body[:200]!r}")
    _report(rows, reference, last, warmup, errors, top)


def _slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of ``(x, y)``."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def _report(rows: list[Any], reference: Any, last: Any, warmup: int, errors: int, top: int) -> None:
    names = list(rows[-1][6])
    print(f"load average {os.getloadavg()[0]:.2f}; {rows[-1][0]:,} requests, {errors} errors")
    print("| requests | s | traced KiB | RSS KiB | gc objects | tokens issued | " + " | ".join(names) + " |")
    print("|" + "---|" * (6 + len(names)))
    for i, at, traced, rss, objects, issued, sizes in rows:
        cells = " | ".join(str(sizes.get(k, "")) for k in names)
        print(f"| {i} | {at:.0f} | {traced / 1024:,.0f} | {rss:,} | {objects:,} | {issued} | {cells} |")
    settled = [r for r in rows if r[0] >= warmup]
    traced_slope = _slope([(r[0], r[2]) for r in settled]) * 1000
    rss_slope = _slope([(r[0], r[3] * 1024) for r in settled]) * 1000
    objects_slope = _slope([(r[0], r[4]) for r in settled]) * 1000
    print(
        f"after request {warmup}: traced {traced_slope / 1024:+.1f} KiB, RSS {rss_slope / 1024:+.1f} KiB, "
        f"gc objects {objects_slope:+.0f} per 1,000 requests"
    )
    if reference is None or last is None:
        return
    print(f"--- top {top} growing allocation sites (traceback), warm-up snapshot -> last ---")
    for stat in last.compare_to(reference, "traceback")[:top]:
        size, now = stat.size_diff / 1024, stat.size / 1024
        print(f"{size:+9.1f} KiB {stat.count_diff:+7d} blocks  (now {now:,.1f} KiB)")
        for line in stat.traceback.format(limit=6)[::-1][:12]:
            print("      " + line)


if __name__ == "__main__":
    main()
