"""Test-process caches for the two costs ``create_app`` repeats identically for every test (issue 9).

About 2,100 tests build an app of their own (``tests/conftest.py``'s ``app``); building one cost about
60 ms of CPU, five sixths of it work whose result never changes within a test run:

* Werkzeug compiles a URL builder for each of the ~60 routes (an AST turned into a code object, twice
  per route). The code depends only on the rule's parsed parts, so one compiled builder serves every
  app's copy of the same rule: the builder takes the rule as its first argument and keeps nothing of
  the rule it was compiled for. Rules with ``defaults`` (whose builder folds default values in) are
  compiled as before.
* ``is_current`` reads every migration script with Alembic to find the heads. The scripts on disk are
  the same all run long (the cache key includes each file's name, size and modification time, so an
  edited or added script is read again); the database's own revision is still queried every time.

A third cost is the database connection: every app made its own engine (a new PostgreSQL backend, the
dialect's first-connect queries, SQLite's pragmas) and disposed of it at the end of the test. The
session databases (``tests/conftest.py``'s ``database_url``) are registered here with :func:`share`,
and ``create_app`` on one of them gets that database's one engine (:func:`engine_for`), whose pooled
connections outlive the test; rows are still deleted before every test. Any other URL (a test's own
file, a private cluster) gets a new engine as before.

Nothing here is importable by the product: it lives under ``tests/`` and is applied by a session
fixture through ``pytest.MonkeyPatch`` (undone at the end of the session). Servers the tests start in
subprocesses (gunicorn, the demo) run the unpatched code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from werkzeug.routing.rules import Rule

import sharing_api.app
from sharing_api.store.engine import make_engine

_BUILDERS: dict[tuple[Any, ...], Callable[..., tuple[str, str]]] = {}
_HEADS: dict[tuple[Any, ...], tuple[str, ...]] = {}
_ENGINES: dict[str, Engine] = {}


def share(url: str) -> None:
    """Let every app built on ``url`` (a session database) use one engine until :func:`dispose`."""
    _ENGINES.setdefault(url, make_engine(url))


def engine_for(url: str, **options: Any) -> Engine:
    """``make_engine`` as the apps see it: a session database's shared engine, else a new one."""
    shared = _ENGINES.get(url)
    return shared if shared is not None and not options else make_engine(url, **options)


def is_shared(engine: Engine) -> bool:
    return any(engine is shared for shared in _ENGINES.values())


def dispose(url: str) -> None:
    shared = _ENGINES.pop(url, None)
    if shared is not None:
        shared.dispose()


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the caches in for the rest of ``monkeypatch``'s life."""
    compile_builder = Rule._compile_builder
    get_heads = ScriptDirectory.get_heads

    def cached_builder(self: Rule, append_unknown: bool = True) -> Callable[..., tuple[str, str]]:
        if self.defaults:
            return compile_builder(self, append_unknown)
        key = (self.rule, tuple(self._trace), append_unknown)
        builder = _BUILDERS.get(key)
        if builder is None:
            builder = _BUILDERS[key] = compile_builder(self, append_unknown)
        return builder

    def cached_heads(self: ScriptDirectory) -> list[str]:
        versions = Path(self.versions)
        stamp = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in versions.glob("*.py")))
        key = (self.dir, stamp)
        if key not in _HEADS:
            _HEADS[key] = tuple(get_heads(self))
        return list(_HEADS[key])

    monkeypatch.setattr(Rule, "_compile_builder", cached_builder)
    monkeypatch.setattr(ScriptDirectory, "get_heads", cached_heads)
    monkeypatch.setattr(sharing_api.app, "make_engine", engine_for)
