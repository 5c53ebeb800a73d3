"""Lists on the command line lose nothing: on a narrow terminal long cells wrap (never "…", never a
dropped column); through a pipe each row is one whole tab-separated line."""

from __future__ import annotations

import io
import re
import sys

import pytest

from sharing_api.tables import print_rows

LONG_ID = "x" * 70  # longer than the terminal is wide
COLUMNS = ["id", "controller", "consumer", "categories", "purposes", "from", "to"]
ROW = [LONG_ID, "921234562", "987654325", "vital-signs survey", "COC ETREAT TREAT", "2024-01-01", ""]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_table_wider_than_the_terminal_wraps_cells_and_keeps_every_column(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("COLUMNS", "60")
    print_rows(COLUMNS, [ROW])
    out = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())  # without colour codes
    assert max(len(line) for line in out.splitlines()) <= 60
    assert "…" not in out
    assert out.count("x") == len(LONG_ID)  # every character of the id is there, folded over lines
    flat = "".join(out.split())
    for name in COLUMNS:
        assert name[:2] in flat, name  # no column dropped (headers may wrap too)


def test_piped_rows_are_whole_tab_separated_lines(capsys: pytest.CaptureFixture[str]) -> None:
    print_rows(COLUMNS, [ROW], title="1 agreement")
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["\t".join(COLUMNS), "\t".join(ROW)]
    assert captured.err.strip() == "1 agreement"
