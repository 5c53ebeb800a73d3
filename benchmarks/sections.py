"""Where a request's CPU goes, by part of the chain: ``python -m benchmarks.inprocess --sections``.

cProfile inflates small functions many times over (its hook runs on every call), so its shares mislead
for a request made of many small calls. Here only a few named functions are wrapped, each with a
thread-CPU timer (``time.thread_time``) around the whole call: inclusive time, the callees included,
at the cost of two clock reads per wrapped call. Sections overlap where one calls another (the table
says which are parts of which).

The wrappers replace the functions wherever the app can reach them: as module attributes in every
loaded module (``from x import f`` copies), class attributes, and Flask's registered hooks and views.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SECTIONS: tuple[tuple[str, str], ...] = (
    ("before the view (Observation routes: _before)", "sharing_api.routes.observations:_before"),
    ("the view (search_post)", "sharing_api.routes.observations:search_post"),
    ("the view (read)", "sharing_api.routes.observations:read"),
    ("the view (token)", "sharing_api.routes.token:token"),
    ("  parse the search (Searcher.parse)", "sharing_api.searching:Searcher.parse"),
    ("  the search (Searcher.search)", "sharing_api.searching:Searcher.search"),
    ("    its paging cursors (PagingCursors.make)", "sharing_api.cursors:PagingCursors.make"),
    ("  audit and answer (_read_result)", "sharing_api.routes.observations:_read_result"),
    ("token and proof checks (protect)", "sharing_api.routes.guard:protect"),
    ("  of which the DPoP proof (verify_proof)", "auth.dpop:verify_proof"),
    ("  of which the Redis script (replay, revocation, rate limit)", "auth.replaystate:RedisState.admit"),
    ("the sharing decision (AccessPolicy.decide)", "sharing_api.access:AccessPolicy.decide"),
    ("the token service (TokenService.token)", "auth.server:TokenService.token"),
    ("  of which the Redis script (the two jti claims)", "auth.replaystate:RedisState.claim_all"),
    ("statements through the driver (one_statement)", "sharing_api.store.one_statement:_run_postgresql"),
    ("the audit record (Auditor.record)", "sharing_api.auditing:Auditor.record"),
    ("  of which its row: canonical bytes, columns (facts_row)", "sharing_api.audit.log:facts_row"),
    ("the request log line (log_request)", "sharing_api.request_log:log_request"),
    ("metrics (observe_request)", "sharing_api.metrics:Metrics.observe_request"),
)
"""(label, ``module:qualified.name``) of each wrapped function, in the order printed."""


@dataclass
class Timer:
    label: str
    seconds: float = 0.0
    calls: int = 0
    depth: int = field(default=0, repr=False)


def _wrap(original: Callable[..., Any], timer: Timer) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        if timer.depth:  # a recursive call is inside the outer one's time already
            return original(*args, **kwargs)
        timer.depth, timer.calls = 1, timer.calls + 1
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            timer.seconds += time.thread_time() - started
            timer.depth = 0

    timed.__wrapped__ = original  # type: ignore[attr-defined]
    timed.__name__ = getattr(original, "__name__", "timed")
    return timed


def _resolve(target: str) -> tuple[Any, str, Any]:
    """(the module or class holding the function, its attribute name, the function)."""
    module_name, qualified = target.split(":")
    owner: Any = importlib.import_module(module_name)
    *path, name = qualified.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name, owner.__dict__[name]


def _replace(original: Any, replacement: Any, app: Any) -> None:
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for key, value in list(namespace.items()):
            if value is original:
                setattr(module, key, replacement)
    registries = [app.view_functions]
    lists = [*app.before_request_funcs.values(), *app.after_request_funcs.values()]
    for registry in registries:
        for key, value in list(registry.items()):
            if value is original:
                registry[key] = replacement
    for hooks in lists:
        for i, value in enumerate(hooks):
            if value is original:
                hooks[i] = replacement


def install(app: Any) -> list[Timer]:
    """Wrap every function of ``SECTIONS`` (for ``app`` and this process); the timers, in order."""
    timers = []
    for label, target in SECTIONS:
        owner, name, original = _resolve(target)
        timer = Timer(label)
        replacement = _wrap(original, timer)
        if isinstance(owner, type):
            setattr(owner, name, replacement)
        else:
            _replace(original, replacement, app)
        timers.append(timer)
    return timers


def reset(timers: list[Timer]) -> None:
    for timer in timers:
        timer.seconds, timer.calls = 0.0, 0


def report(name: str, timers: list[Timer], requests: int) -> list[str]:
    lines = [f"--- {name}: thread CPU per request, inclusive, {requests} requests ---"]
    lines.append(f"{'µs':>8} {'calls':>6}  part")
    for timer in timers:
        if timer.calls:
            per = 1e6 * timer.seconds / requests
            lines.append(f"{per:8.0f} {timer.calls / requests:6.2f}  {timer.label}")
    return lines
