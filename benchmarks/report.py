"""The results as a table (rich, on the terminal) and as Markdown, with the facts needed to read them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import sharing_api
from benchmarks.cpu import GROUPS
from benchmarks.load import LoadResult

SEARCH_TARGET = (1000.0, 15.0)  # requests/s, p99 ms (product.md §6)
INGEST_TARGET = 3000.0  # observations/s (product.md §6)
READ_TARGET_MS = 1.2  # server+storage CPU ms per read by id, full chain (issue 12)
TOKEN_TARGET = 500.0  # tokens/s, private_key_jwt + DPoP (issue 12)
NOT_MEASURED = (
    "The full chain is measured: DPoP-bound tokens and a fresh proof per request, the sharing decision, "
    "and the durable audit record (committed before the response); TLS is not (loopback HTTP)."
)
BUSY_ELSEWHERE = 0.2
"""Above this share of the machine spent outside the benchmark, a phase's numbers are flagged."""
SPEEDS_APART = 1.25
"""When the reference loop's figures of two phases are further apart than this factor, the run is flagged:
the host ran the cores at different speeds, and every CPU figure moves with that speed."""
COLUMNS = (
    "Scenario",
    "Clients",
    "Requests",
    "Throughput",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "Errors",
    "load avg",
    "CPU " + " / ".join(GROUPS),
    "server+storage CPU ms per item",
    "Target (product.md §6, issue 12)",
    "Met",
)


@dataclass(frozen=True)
class Results:
    ingest: LoadResult
    created: int
    observations: int
    bundle_size: int
    health: LoadResult
    search: LoadResult
    read: LoadResult | None = None
    token: LoadResult | None = None

    @property
    def ingest_rate(self) -> float:
        return self.created / self.ingest.seconds if self.ingest.seconds else 0.0

    def phases(self) -> dict[str, LoadResult]:
        out = {"ingest": self.ingest, "baseline": self.health, "search": self.search}
        if self.read is not None:
            out["read"] = self.read
        if self.token is not None:
            out["token"] = self.token
        return out

    @property
    def broken(self) -> bool:
        """Something failed: an error response, or an observation that was not created."""
        errors = sum(r.errors for r in self.phases().values())
        return bool(errors) or self.created != self.observations


def cpu_ms_per_item(r: LoadResult, items: int) -> float | None:
    """Server and storage CPU milliseconds per item: unlike the rate, barely moved by other work on the
    machine, so it is the number to compare between runs."""
    if not r.cpu or not items:
        return None
    if r.cpu_seconds:
        spent = r.cpu_seconds.get("server", 0.0) + r.cpu_seconds.get("storage", 0.0)
    else:
        spent = (r.cpu.get("server", 0.0) + r.cpu.get("storage", 0.0)) * (os.cpu_count() or 1) * r.seconds
    return spent / items * 1000


def _row(name: str, r: LoadResult, items: int, throughput: str, target: str, met: bool | None) -> list[str]:
    cpu = " / ".join(f"{r.cpu[g]:.0%}" for g in GROUPS) if r.cpu else "n/a"
    ms = cpu_ms_per_item(r, items)
    per_item = "n/a" if ms is None else f"{ms:.2f}"
    return [
        name,
        str(r.clients),
        f"{r.requests:,}",
        throughput,
        *(f"{r.percentile_ms(p):.2f}" for p in (50, 95, 99, 100)),
        str(r.errors),
        f"{r.load_average:.1f}",
        cpu,
        per_item,
        target,
        "n/a" if met is None else ("yes" if met else "no"),
    ]


def rows(res: Results) -> list[list[str]]:
    search_ok = res.search.rate >= SEARCH_TARGET[0] and res.search.percentile_ms(99) <= SEARCH_TARGET[1]
    out = [
        _row(
            f"ingest: batch Bundles of {res.bundle_size} (latency per Bundle)",
            res.ingest,
            res.created,
            f"{res.ingest_rate:,.0f} obs/s",
            f">= {INGEST_TARGET:,.0f} obs/s",
            res.ingest_rate >= INGEST_TARGET,
        ),
        _row(
            "baseline: GET /healthz",
            res.health,
            res.health.requests,
            f"{res.health.rate:,.0f} req/s",
            "(framework floor)",
            None,
        ),
        _row(
            "search: 1 patient, 1 code, 6 days (12 hits)",
            res.search,
            res.search.requests,
            f"{res.search.rate:,.0f} req/s",
            f">= {SEARCH_TARGET[0]:,.0f} req/s, p99 <= {SEARCH_TARGET[1]:g} ms",
            search_ok,
        ),
    ]
    if res.read is not None:
        ms = cpu_ms_per_item(res.read, res.read.requests)
        out.append(
            _row(
                "read by id (full chain)",
                res.read,
                res.read.requests,
                f"{res.read.rate:,.0f} req/s",
                f"<= {READ_TARGET_MS:g} ms CPU per read",
                None if ms is None else ms <= READ_TARGET_MS,
            )
        )
    if res.token is not None:
        out.append(
            _row(
                "token endpoint: private_key_jwt + DPoP",
                res.token,
                res.token.requests,
                f"{res.token.rate:,.0f} tokens/s",
                f">= {TOKEN_TARGET:,.0f} tokens/s",
                res.token.rate >= TOKEN_TARGET,
            )
        )
    return out


def server_split(res: Results) -> str:
    """One line: how each phase's server CPU divided between the workers, and the kernel's part of it
    (uneven workers: keep-alive connections piled onto one; a large kernel part: sockets and polling)."""
    parts = []
    for name, r in res.phases().items():
        if r.server is not None:
            workers = "/".join(f"{w:.0%}" for w in r.server.workers)
            parts.append(f"{name} {workers}, kernel {r.server.system:.0%}")
    return "server CPU by worker, and the kernel's share of it: " + ("; ".join(parts) or "n/a")


def host_speed(res: Results) -> str:
    """One line: how fast the host ran Python code during each phase (``cpu.reference_loop``'s median CPU
    ms: lower is faster). On this VM it is ~2.1-2.6 or ~3.7-4.2 ms."""
    parts = [f"{name} {r.reference_ms:.1f}" for name, r in res.phases().items() if r.reference_ms]
    return "host speed, CPU ms of a fixed Python loop (lower is faster): " + (", ".join(parts) or "n/a")


def warnings(res: Results) -> list[str]:
    out = []
    speeds = {name: r.reference_ms for name, r in res.phases().items() if r.reference_ms}
    if speeds and max(speeds.values()) > SPEEDS_APART * min(speeds.values()):
        slow = [name for name, ms in speeds.items() if ms > SPEEDS_APART * min(speeds.values())]
        out.append(
            f"the host ran the cores slower during {', '.join(slow)} (the reference loop took "
            f"{min(speeds.values()):.1f}-{max(speeds.values()):.1f} ms): those rows' CPU per item is "
            "inflated by as much; compare rows of the same host speed"
        )
    for name, r in res.phases().items():
        if r.cpu.get("rest", 0.0) > BUSY_ELSEWHERE:
            out.append(
                f"during {name}, {r.cpu['rest']:.0%} of the machine went to other work (other processes, "
                "the kernel): rerun on an idle machine before trusting that row"
            )
    return out


def revision() -> str:
    """The commit of the sharing_api being measured, and whether it has uncommitted changes."""
    root = Path(sharing_api.__file__).resolve().parent.parent
    git = ["git", "-C", str(root)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "sharing_api", "auth", "consent"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{root} (not a git checkout)"
    return f"commit {commit.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def show(table_rows: list[list[str]], context: list[str]) -> None:
    table = Table(*COLUMNS, title="dho-share benchmarks")
    for row in table_rows:
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 170).print(table)
    for line in context:
        Console().print(line, markup=False, highlight=False)


def markdown(table_rows: list[list[str]], context: list[str]) -> str:
    lines = [*context, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows]
    return "\n".join(lines) + "\n"
