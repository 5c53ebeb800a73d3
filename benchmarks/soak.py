"""``python -m benchmarks --soak [SECONDS]``: mixed load for a while, and each worker's memory over time.

A fresh database is seeded straight into the store (``--observations``, ``seeding.py``, as ``--scale``
does), then clients send a mix for SECONDS (default 1,800): searches (6 in 10), reads by id (3 in
10) and batch Bundles of new measurements (1 in 10), every request signed when it is sent (the full
chain, as in the standard run). Every server worker's resident set size is read from
``/proc/<pid>/status`` every ``SAMPLE_SECONDS``; the table shows it after the warm-up (a fifth of the
run, at most 5 minutes) and at the end, and the growth between them (target: at most 5 %, issue 12).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from benchmarks import report
from benchmarks.cpu import CpuProbe
from benchmarks.environment import TENANT, analyze, api_server, database_version, fresh_database, search_forms
from benchmarks.load import LoadResult, OnDemand, run_load
from benchmarks.parties import Credentials, form_patient, register
from benchmarks.scale import SEARCH_MIX, _found
from benchmarks.seeding import Seeder
from sharing_api.seed import batches, make_patient, series

console = Console(stderr=True)
SAMPLE_SECONDS = 5.0
GROWTH_TARGET = 0.05
BUNDLE = 20
"""Observations per Bundle in the mix (new measurements of new patients)."""
MIX = ("search",) * 6 + ("read",) * 3 + ("ingest",)


def workers_of(master: int) -> list[int]:
    """The server's main process's children (its workers), from /proc."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == master:
                out.append(int(entry.name))
    return sorted(out)


def rss_kib(pid: int) -> int | None:
    """Resident set size in KiB (``VmRSS``), or ``None`` when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """Reads every worker's RSS every ``SAMPLE_SECONDS`` until stopped: (seconds since start, pid, KiB)."""

    def __init__(self, master: int):
        super().__init__(daemon=True)
        self.master = master
        self.samples: list[tuple[float, int, int]] = []
        self.began = time.monotonic()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            at = time.monotonic() - self.began
            for pid in workers_of(self.master):
                kib = rss_kib(pid)
                if kib is not None:
                    self.samples.append((at, pid, kib))
            self.stopped.wait(SAMPLE_SECONDS)


@dataclass(frozen=True)
class Worker:
    pid: int
    after_warmup: int
    end: int
    peak: int

    @property
    def growth(self) -> float:
        return self.end / self.after_warmup - 1


def summarise(samples: list[tuple[float, int, int]], warmup: float) -> list[Worker]:
    out = []
    for pid in sorted({p for _, p, _ in samples}):
        series_ = [(t, kib) for t, p, kib in samples if p == pid]
        settled = [kib for t, kib in series_ if t >= warmup]
        if not settled:
            continue
        out.append(Worker(pid, settled[0], series_[-1][1], max(kib for _, kib in series_)))
    return out


def run(
    seconds: float,
    database: str,
    postgres_url: str,
    observations: int,
    days: int,
    workers: int,
    seed: int,
    markdown_path: Path | None,
    options: dict[str, Any],
) -> None:
    load_before = os.getloadavg()[0]
    warmup = min(300.0, seconds / 5)
    clients = int(options["clients"])
    with (
        tempfile.TemporaryDirectory(prefix="dho-bench-") as tmp,
        fresh_database(database, Path(tmp), postgres_url) as url,
    ):
        db_version = database_version(url)
        seeder = Seeder(url, days, seed, int(options["seed_processes"]), options["seed_indexes"] == "rebuild")
        seeder.fill(observations)
        seeder.dispose()
        analyze(url)
        with api_server(url, workers, Path(tmp) / "server.log") as server:
            port, base = server.port, f"http://127.0.0.1:{server.port}"
            probe = CpuProbe(server.pid, url.rsplit("/", 1)[1] if database == "postgresql" else None)
            creds = Credentials(base, register(url, TENANT))
            creds.publisher.access_token()
            path = f"/{TENANT}/fhir/Observation/_search"
            forms = search_forms(seeder.dataset(), SEARCH_MIX, seed)

            def search(n: int) -> bytes:
                f = forms[n % len(forms)]
                return creds.search_request(port, path, f)

            found = _found(port, [search(i) for i in range(len(forms))])
            targets = [
                (form_patient(f), ids[n]) for f, ids in zip(forms, found, strict=True) for n in (0, 5, 11)
            ]

            def read(n: int) -> bytes:
                fnr, obs_id = targets[n % len(targets)]
                return creds.read_request(port, f"/{TENANT}/fhir/Observation/{obs_id}", fnr)

            def ingest(n: int) -> bytes:
                rng = random.Random(f"{seed}-{os.getpid()}-{n}")
                resources = series(make_patient(rng), TENANT, 2, rng, datetime.now(UTC))
                body = orjson.dumps(next(batches(resources, BUNDLE)))
                return creds.bundle_request(port, f"/{TENANT}/fhir", body)

            kinds = {"search": search, "read": read, "ingest": ingest}

            def mixed(offset: int) -> Callable[[int], bytes]:
                """Client ``offset``'s mix: the kinds in ``MIX`` order, each with its own item."""
                return lambda i: kinds[MIX[(i + offset) % len(MIX)]](i * 7919 + offset)

            sampler = Sampler(server.pid)
            sampler.start()
            console.print(f"soak: {clients} clients, {seconds:g} s of mixed load (warm-up {warmup:g} s) ...")
            try:
                load = run_load(
                    port,
                    [OnDemand(mixed(i * 3)) for i in range(clients)],
                    repeat=False,
                    warmup=warmup,
                    duration=seconds - warmup,
                    probe=probe,
                    socket_timeout=120.0,
                )
            finally:
                sampler.stopped.set()
                sampler.join()
    _report(seconds, warmup, load, sampler.samples, load_before, db_version, seeder, markdown_path)


COLUMNS = ("Worker", "RSS after warm-up MiB", "RSS at end MiB", "peak MiB", "growth", "Target (<= 5 %)")


def _report(
    seconds: float,
    warmup: float,
    load: LoadResult,
    samples: list[tuple[float, int, int]],
    load_before: float,
    db_version: str,
    seeder: Seeder,
    markdown_path: Path | None,
) -> None:
    found = summarise(samples, warmup)
    rows = [
        [
            f"pid {w.pid}",
            f"{w.after_warmup / 1024:.1f}",
            f"{w.end / 1024:.1f}",
            f"{w.peak / 1024:.1f}",
            f"{w.growth:+.1%}",
            "met" if w.growth <= GROWTH_TARGET else "not met",
        ]
        for w in found
    ]
    ms = report.cpu_ms_per_item(load, load.requests)
    context = [
        f"- {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {report.machine()}, {db_version}; "
        f"load average before the run {load_before:.2f}, when measuring began {load.load_average:.2f}",
        f"- command: `{' '.join(['python -m benchmarks', *sys.argv[1:]])}`; code: {report.revision()}",
        f"- {seeder.stored:,} observations seeded through the store first ({seeder.seconds:.0f} s); then "
        f"{load.clients} closed-loop clients for {seconds:g} s: searches 6/10, reads by id 3/10, batch "
        f"Bundles of {BUNDLE} new observations 1/10, full chain, every request signed when sent",
        f"- after the {warmup:g} s warm-up: {load.requests:,} requests, {load.errors} errors, "
        f"{load.rate:,.1f} req/s, p50 {load.percentile_ms(50):.1f} ms, p99 {load.percentile_ms(99):.1f} ms, "
        f"server+storage CPU {'n/a' if ms is None else f'{ms:.2f}'} ms per request",
        f"- RSS (VmRSS from /proc) of every server worker every {SAMPLE_SECONDS:g} s; growth = end vs "
        "first sample after the warm-up",
    ]
    table = Table(*COLUMNS, title="dho-share soak: worker memory")
    for row in rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 170).print(table)
    for line in context:
        Console().print(line, markup=False, highlight=False)
    if markdown_path:
        lines = [*context, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        step = max(1, int(60 / SAMPLE_SECONDS))
        lines += [
            "",
            "RSS MiB over time (every minute):",
            "",
            "| s | " + " | ".join(f"pid {w.pid}" for w in found) + " |",
        ]
        lines.append("|" + "---|" * (len(found) + 1))
        times = sorted({t for t, _, _ in samples})
        for t in times[::step]:
            by_pid = {p: kib for at, p, kib in samples if at == t}
            lines.append(
                f"| {t:.0f} | " + " | ".join(f"{by_pid.get(w.pid, 0) / 1024:.1f}" for w in found) + " |"
            )
        markdown_path.write_text("\n".join(lines) + "\n")
    if load.errors or not found:
        raise SystemExit("some requests failed, or no worker was sampled: see the table")
