"""A SQLAlchemy statement compiled once for a dialect and run with values (issue 12).

Building and compiling expressions per request cost more CPU than running them; a statement compiled
once is run with ``exec_driver_sql`` and its values, positional where the dialect's paramstyle is
(SQLite), named where it is not (psycopg). The values go through the compiled statement's own bind
processing (``construct_params``), as ``Connection.execute`` would do.

``generic_plan`` marks a statement whose plan PostgreSQL may make once for all values
(``store.one_statement`` runs it with ``plan_cache_mode=force_generic_plan``): planning a search cost
PostgreSQL more CPU than running it. Only a statement whose generic plan a test proves at 100,000 rows
is marked (``tests/store/test_generic_plans.py``); every other one is planned with its values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement

__all__ = ["CompiledStatement", "PerDialect"]


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    sql: str
    compiled: Any
    positional: tuple[str, ...] | None
    """The parameter names in the order of their placeholders; ``None`` for named parameters."""
    generic_plan: bool = False
    """PostgreSQL may plan it once for all values (see the module docstring)."""

    @classmethod
    def of(
        cls, stmt: ClauseElement, dialect: Any, what: str = "statement", *, generic_plan: bool = False
    ) -> CompiledStatement:
        """``stmt`` compiled for ``dialect``.

        :raise RuntimeError: the statement has an expanding parameter (its SQL depends on the values)."""
        compiled: Any = stmt.compile(dialect=dialect)
        sql = str(compiled)
        if "POSTCOMPILE" in sql:  # an expanding parameter would need the values: never cache it
            raise RuntimeError(f"the {what} cannot be compiled once")
        positional = tuple(compiled.positiontup) if compiled.positional else None
        return cls(sql, compiled, positional, generic_plan)

    def arguments(self, values: dict[str, Any]) -> Any:
        """The driver's arguments for ``values`` (every parameter the statement has), bind-processed."""
        params = self.compiled.construct_params(values, _check=True)
        return tuple(params[n] for n in self.positional) if self.positional is not None else params

    def execute(self, conn: Connection, values: dict[str, Any]) -> Any:
        """Run the statement on ``conn`` with ``values`` (every parameter it has)."""
        return conn.exec_driver_sql(self.sql, self.arguments(values))


class PerDialect:
    """A statement compiled once per dialect, when first asked for: ``PerDialect(build, what)(dialect)``.
    ``build`` makes the SQLAlchemy statement; ``what`` and ``generic_plan`` as in
    :meth:`CompiledStatement.of`. ``by_name`` holds the compiled statements by dialect name."""

    __slots__ = ("build", "by_name", "generic_plan", "what")

    def __init__(self, build: Callable[[], ClauseElement], what: str, *, generic_plan: bool = False) -> None:
        self.build = build
        self.what = what
        self.generic_plan = generic_plan
        self.by_name: dict[str, CompiledStatement] = {}

    def __call__(self, dialect: Any) -> CompiledStatement:
        found = self.by_name.get(dialect.name)
        if found is None:
            found = CompiledStatement.of(self.build(), dialect, self.what, generic_plan=self.generic_plan)
            self.by_name[dialect.name] = found
        return found
