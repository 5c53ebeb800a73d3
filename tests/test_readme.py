"""Every Python block in README.md runs as written against the demo (issue 9: the ``DhoClient``
snippet never defined ``key``). The blocks address the demo's URL ``http://127.0.0.1:8080``; the test
runs them in the demo's directory against the same demo served on a free port instead."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo_server import Demo, demo

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)
DEMO_URL = "http://127.0.0.1:8080"
__all__ = ["demo"]  # the module-scoped fixture


def test_the_readme_has_python_blocks() -> None:
    assert BLOCKS


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_readme_python_block_runs(demo: Demo, block: str) -> None:
    assert DEMO_URL in block or "127.0.0.1" not in block  # so that the substitution below is the whole story
    code = block.replace(DEMO_URL, demo.url) + "\nprint('README block ran')\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=demo.directory, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "README block ran" in result.stdout
