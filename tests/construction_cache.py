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

* Werkzeug parses each rule's text into parts (regular expressions and weights) for every app, again
  the same result for the same text and converters: the parts are kept, and a rule whose text was seen
  before gets them (the matcher only reads them) and new converter objects of its own, made exactly as
  the parse made them (``_parse_rule``).

A third cost is the database connection: every app made its own engine (a new PostgreSQL backend, the
dialect's first-connect queries, SQLite's pragmas) and disposed of it at the end of the test. The
session databases (``tests/conftest.py``'s ``database_url``) are registered here with :func:`share`,
and ``create_app`` on one of them gets that database's one engine (:func:`engine_for`), whose pooled
connections outlive the test; rows are still deleted before every test. Any other URL (a test's own
file, a private cluster) gets a new engine as before. On a shared engine ``is_current`` reads the
revision straight from ``alembic_version`` (one statement) instead of setting up Alembic's migration
context and reflecting the table first; the answer is the same, and tests that migrate up and down use
databases of their own (``tests/audit/conftest.py``'s ``fresh_url``).

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
from sqlalchemy.exc import DBAPIError
from werkzeug.routing.rules import Rule, RulePart

import sharing_api.app
from sharing_api.store.engine import MIGRATIONS, is_current, make_engine

_BUILDERS: dict[tuple[Any, ...], Callable[..., tuple[str, str]]] = {}
_PARSED: dict[tuple[Any, ...], tuple[tuple[RulePart, ...], tuple[Any, ...], tuple[Any, ...]]] = {}
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


def current(engine: Engine) -> bool:
    """``is_current`` as the apps see it: on a shared engine, one query of ``alembic_version``."""
    if not is_shared(engine):
        return is_current(engine)
    heads = set(ScriptDirectory(str(MIGRATIONS)).get_heads())
    with engine.connect() as conn:
        try:
            revisions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
        except DBAPIError:  # no alembic_version table: never migrated
            return False
    return set(revisions) == heads


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route the caches in for the rest of ``monkeypatch``'s life."""
    compile_builder = Rule._compile_builder
    get_heads = ScriptDirectory.get_heads
    parse_rule = Rule._parse_rule

    def cached_parse(self: Rule, rule: str) -> list[RulePart]:
        assert self.map is not None
        key = (rule, tuple(self.map.converters.items()))
        parsed = _PARSED.get(key)
        if parsed is None:
            made: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = []
            get_converter = self.get_converter

            def recording(variable: str, name: str, args: tuple[Any, ...], kwargs: Any) -> Any:
                made.append((variable, name, args, dict(kwargs)))
                return get_converter(variable, name, args, kwargs)

            trace_from = len(self._trace)
            self.get_converter = recording  # type: ignore[method-assign]
            try:
                parts = list(parse_rule(self, rule))
            finally:
                del self.get_converter
            _PARSED[key] = (tuple(parts), tuple(self._trace[trace_from:]), tuple(made))
            return parts
        parts_, trace, converters = parsed
        for variable, name, args, kwargs in converters:
            self._converters[variable] = self.get_converter(variable, name, args, kwargs)
            self.arguments.add(variable)
        self._trace.extend(trace)
        return list(parts_)

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
    monkeypatch.setattr(Rule, "_parse_rule", cached_parse)
    monkeypatch.setattr(sharing_api.app, "is_current", current)
    monkeypatch.setattr(sharing_api.app, "make_engine", engine_for)
