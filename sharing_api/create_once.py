"""Files made once and then only read: the keys and secrets every worker and node must share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def create_once(path: Path, write: Callable[[Path], None]) -> None:
    """Make the file at ``path`` with ``write`` unless another process has made it first.

    Several processes may start at once: each has ``write`` make a staged file beside ``path`` (under a
    name of its own) and links it into place; the link fails for all but the first, so every process
    then reads the one file that won. ``write`` must create its file (0600 for secrets); a stale staged
    file left by a crashed process with the same pid is removed, and the next call starts afresh.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.new")
    try:
        write(staged)
        os.link(staged, path)
    except FileExistsError:
        if not path.exists():  # the staged name was taken, not the file: nothing was made
            raise
    finally:
        staged.unlink(missing_ok=True)
