"""How the command line prints lists: a table on a terminal, tab-separated lines through a pipe, JSON
on request (issue 9, "the consumer's command line").

Nothing is ever cut: on a terminal narrower than the table, rich folds long cells (an id wraps onto the
next line rather than ending in "…"), and through a pipe every row is one line of tab-separated fields,
whole, so ``... list | cut -f1`` gives ids that the next command accepts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

__all__ = ["print_json", "print_rows"]


def print_rows(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None, err: bool = False
) -> None:
    """Print ``rows`` under ``columns``: a folded rich table on a terminal, TSV otherwise (with the
    column names as the first line, and the title, if any, on stderr)."""
    stream = sys.stderr if err else sys.stdout
    if stream.isatty():
        table = Table(title=title)
        for name in columns:
            table.add_column(name, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=stream).print(table)
        return
    if title:
        click.echo(title, err=True)
    click.echo("\t".join(columns), err=err)
    for row in rows:
        click.echo("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row), err=err)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (dates as ISO 8601)."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
