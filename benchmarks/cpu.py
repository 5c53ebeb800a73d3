"""Where the machine's CPU went during a measurement, from Linux's /proc.

On a 2-core machine the API server, the database and the load generator share the cores, and so
does anything else that happens to run (a test suite, say). Splitting the CPU time between them
shows whether the server was saturated, whether the load generator got in the way, and whether
other work disturbed the run.
"""

from __future__ import annotations

import array
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass, field

GROUPS = ("server", "storage", "loadgen", "rest")
"""The API server's processes (gunicorn's or granian's main process and its workers); PostgreSQL and
Redis; this program; everything else (including the kernel's own time, such as loopback networking, and
other people's processes)."""

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _processes() -> tuple[dict[int, tuple[int, str, float, int]], dict[int, float]]:
    """pid -> (parent pid, command line, CPU seconds used so far, start time); and pid -> the part of
    those seconds spent in the kernel (system time)."""
    out, system = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # it ended meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / _TICK
        out[int(entry.name)] = (int(fields[1]), command, cpu, int(fields[19]))
        system[int(entry.name)] = int(fields[12]) / _TICK
    return out, system


def _machine() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK


@dataclass(frozen=True)
class Sample:
    per_process: dict[int, tuple[int, str, float, int]]
    busy: float
    total: float
    system: dict[int, float] = field(default_factory=dict)
    """pid -> system (kernel) CPU seconds so far."""

    def spent_since(self, before: Sample, pid: int) -> tuple[float, float]:
        """(CPU, system CPU) seconds process ``pid`` used between ``before`` and this sample; all it
        used so far when ``before`` did not know it (it started later, or the pid was reused)."""
        _, _, cpu, started = self.per_process[pid]
        earlier = before.per_process.get(pid)
        if not (earlier and earlier[3] == started):
            return max(0.0, cpu), self.system.get(pid, 0.0)
        kernel = self.system.get(pid, 0.0) - before.system.get(pid, 0.0)
        return max(0.0, cpu - earlier[2]), max(0.0, kernel)


@dataclass(frozen=True)
class ServerSplit:
    """How the API server's CPU time divided: between its workers, and user vs kernel."""

    workers: tuple[float, ...]
    """Each worker's share of the server's CPU time, largest first (the master is the rest)."""
    system: float
    """The kernel's (system time's) share of the server's CPU time: sockets, polling, futexes."""


class CpuProbe:
    """Samples CPU time by group; ``share(a, b)`` gives each group's fraction of all cores between."""

    def __init__(self, server_pid: int, database: str | None):
        self.server_pid = server_pid
        self.own_pid = os.getpid()
        self.database = re.compile(rf"\b{re.escape(database)}\b") if database else None

    def sample(self) -> Sample | None:
        try:
            per_process, system = _processes()
            return Sample(per_process, *_machine(), system=system)
        except OSError:
            return None  # not Linux

    def group(self, pid: int, procs: dict[int, tuple[int, str, float, int]]) -> str:
        command = procs[pid][1]
        if command.startswith("redis-server"):
            return "storage"
        if command.startswith("postgres"):
            # Our database's backends and the cluster's own processes; other databases' backends are
            # somebody else's work.
            is_backend = "(" in command or "[local]" in command
            ours = self.database is not None and self.database.search(command)
            return "storage" if ours or not is_backend else "rest"
        seen = 0
        while pid > 1 and seen < 64:  # walk up to a known ancestor
            if pid == self.server_pid:
                return "server"
            if pid == self.own_pid:
                return "loadgen"
            pid, seen = procs[pid][0] if pid in procs else 0, seen + 1
        return "rest"

    def share(self, before: Sample | None, after: Sample | None) -> dict[str, float]:
        """Each group's CPU time between the samples as a fraction of all cores; ``rest`` is what the
        machine spent beyond the named groups (other processes, processes that ended, the kernel)."""
        if before is None or after is None or after.total <= before.total:
            return {}
        used = dict.fromkeys(GROUPS, 0.0)
        for pid in after.per_process:
            used[self.group(pid, after.per_process)] += after.spent_since(before, pid)[0]
        wall = after.total - before.total
        busy = after.busy - before.busy
        used["rest"] = max(0.0, busy - used["server"] - used["storage"] - used["loadgen"])
        return {group: seconds / wall for group, seconds in used.items()}

    def server_split(self, before: Sample | None, after: Sample | None) -> ServerSplit | None:
        """The server's CPU between the samples by worker (the master's children) and user/system."""
        if before is None or after is None:
            return None
        used: dict[int, float] = {}
        system = total = 0.0
        for pid, (parent, *_) in after.per_process.items():
            if self.group(pid, after.per_process) != "server":
                continue
            spent, kernel = after.spent_since(before, pid)
            total, system = total + spent, system + kernel
            if parent == self.server_pid:
                used[pid] = spent
        if total <= 0:
            return None
        return ServerSplit(tuple(sorted((s / total for s in used.values()), reverse=True)), system / total)


REFERENCE_STEPS = 50_000
"""Steps of ``reference_loop``: about 2 ms of CPU when this VM's cores run fast."""


def reference_loop(steps: int = REFERENCE_STEPS) -> float:
    """Thread CPU seconds that a fixed piece of pure-Python work took: ``steps`` lookups in a 16 KiB
    array (it stays in the L1 cache; no allocation, no system call). CPU time, not wall time, so
    waiting for the cores does not count: the figure moves with how fast the core ran Python code.

    On this VM that speed has two levels: 50,000 steps took either 2.1-2.6 or 3.7-4.2 ms of CPU
    (2026-12-03: 73 samples 2 s apart, and 40 pairs with a JSON round trip, which moved with it), with
    the guest equally busy, no steal time, whether or not the other core was busy, while a SHA-256 loop
    (SHA-NI instructions) took 1.55-1.65 ms throughout. Nothing inside the guest (/proc) shows it. It
    does not see the other way this machine inflates CPU per request: processes evicting each other's
    caches when the cores are crowded (``rest``)."""
    table = _REFERENCE_TABLE
    started = time.thread_time()
    x = 0
    for _ in range(steps):
        x = table[x]
    return time.thread_time() - started


_REFERENCE_TABLE = array.array("i", [(i * 7919 + 1) % 4096 for i in range(4096)])


class SpeedProbe:
    """Runs ``reference_loop`` every ``every`` seconds in a thread of this process, between ``start``
    and ``stop``; ``stop`` returns the median CPU milliseconds it took (``None`` without a sample).

    ``CPU ms per item`` rises with more work per request and with a slower host alike; this figure only
    with the host. About 1 % of one core at the default period (a sample is 2-4 ms)."""

    def __init__(self, every: float = 0.25):
        self.every = every
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SpeedProbe:
        self._samples.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="speed-probe", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:  # one sample at least, however short the window
            self._samples.append(reference_loop())
            if self._stop.wait(self.every):
                return

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return statistics.median(self._samples) * 1000 if self._samples else None
