"""The other modes of ``python -m benchmarks``: ``--scale`` (``scale.py``) and ``--soak`` (``soak.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def chosen(
    database: str,
    postgres_url: str,
    observations: int,
    days: int,
    workers: int,
    seed: int,
    markdown_path: Path | None,
    options: dict[str, Any],
) -> bool:
    """Run the mode the options ask for and say so; ``False`` for the standard run. Removes the
    modes' own options from ``options`` either way."""
    scale, soak = options.pop("scale", False), options.pop("soak", None)
    args = (database, postgres_url, observations, days, workers, seed, markdown_path, options)
    if scale:
        from benchmarks.scale import run as run_scale

        run_scale(*args)
        return True
    if soak is not None:
        from benchmarks.soak import run as run_soak

        run_soak(float(soak), *args)
        return True
    return False
