"""Patients' surnames for log-control rule R9 (same surname, console.md §5.2): the port the rules ask,
a file-backed stand-in for it, and the surname comparison (docs/console-rules.md).

The audit log holds no patient names, and never will: the review queue asks a ``PersonRegister`` for
the family names of the few patients R9 looks at (accesses that already carry R6 or R7), when the queue
is built, and keeps the answer only for that run. The health worker's surname is the last word of the
practitioner's name the event records. A shared surname among the 50 commonest in Norway (SSB,
``data/common-surnames.csv``) is no signal.

Two registers plug in here:

* ``FileRegister``: a JSON object ``{"<identifier value>": "<family name>", ...}`` at the path a
  deployment sets in ``DHO_PERSON_REGISTER``, read once when the service starts. It holds identity
  numbers, so it is refused when anyone but its owner may read it (mode 0600, like the key files), and
  ``write_register`` (the demo and ``dho-share seed-audit``) creates it 0600. Its ``repr`` names no one.
* A Folkeregister adapter (not built): a class with the same ``family_names`` method that asks the
  National Population Register through Norsk helsenett's Persontjenesten (a HelseID machine token for
  the controller, whose legal basis for log control must cover the lookup) with one batched request
  per review-queue build, keeps nothing, and raises ``RegisterUnavailable`` when the service does not
  answer, so that R9 reports "needs data" for that run instead of passing. It is chosen where
  ``sharing_api.app.build_services`` loads the file register (``person_register_of``).

Nothing here knows Flask or SQL.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import tempfile
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Protocol

__all__ = [
    "FileRegister",
    "PersonRegister",
    "RegisterError",
    "RegisterUnavailable",
    "SurnameCheck",
    "common_surnames",
    "write_register",
]

_MAX_ID = 64
_MAX_NAME = 200


class RegisterError(ValueError):
    """The register file cannot be used (its mode, its shape); the message names no person."""


class RegisterUnavailable(RuntimeError):
    """The register did not answer (a remote register's outage): R9 cannot run this time."""


class PersonRegister(Protocol):
    """Where the review queue gets patients' family names (module docstring)."""

    def family_names(self, identifiers: Collection[str]) -> Mapping[str, str]:
        """The family name of each of ``identifiers`` the register knows (the others are absent)."""
        ...


class FileRegister:
    """A stand-in register read once from a JSON file (module docstring)."""

    __slots__ = ("_names", "path")

    def __init__(self, names: Mapping[str, str], path: Path | None = None):
        self._names = dict(names)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> FileRegister:
        """The register at ``path``; ``RegisterError`` when group or others may read it, or it is not a
        JSON object of identifier -> family name."""
        path = Path(path)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError as exc:
            raise RegisterError(f"person register {path}: no such file") from exc
        if mode & 0o077:
            raise RegisterError(
                f"person register {path} is mode {mode:04o}: it holds identity numbers, make it readable"
                " by its owner only (chmod 600)"
            )
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegisterError(f"person register {path}: not a JSON object") from exc
        return cls(_checked(document, path), path)

    def family_names(self, identifiers: Collection[str]) -> Mapping[str, str]:
        return {i: self._names[i] for i in identifiers if i in self._names}

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"FileRegister(path={str(self.path)!r}, persons={len(self._names)})"


def _checked(document: object, path: Path) -> dict[str, str]:
    if not isinstance(document, dict):
        raise RegisterError(f"person register {path}: not a JSON object of identifier -> family name")
    for n, (key, value) in enumerate(document.items(), 1):
        if not (isinstance(key, str) and 0 < len(key.strip()) <= _MAX_ID):
            raise RegisterError(f"person register {path}: entry {n}: the identifier is not 1-64 characters")
        if not (isinstance(value, str) and 0 < len(value.strip()) <= _MAX_NAME):
            raise RegisterError(f"person register {path}: entry {n}: the family name is not 1-200 characters")
    return {k.strip(): v.strip() for k, v in document.items()}


def write_register(path: Path, names: Mapping[str, str]) -> int:
    """Add ``names`` (identifier -> family name) to the register file at ``path`` (made when missing),
    written atomically and readable by its owner only; returns how many persons it then holds."""
    path = Path(path)
    merged = dict(FileRegister.load(path)._names) if path.exists() else {}
    merged.update(_checked(dict(names), path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(merged, handle, ensure_ascii=False, indent=0, sort_keys=True)
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return len(merged)


@cache
def common_surnames() -> frozenset[str]:
    """The 50 commonest surnames in Norway (``data/common-surnames.csv``, SSB; its header cites the
    source and year), as compared (``_fold``)."""
    text = resources.files("sharing_api.console").joinpath("data/common-surnames.csv").read_text("utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return frozenset(_fold(row["surname"]) for row in rows)


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold().strip()


def _parts(name: str) -> set[str]:
    """A surname's parts: ``Berg-Nordmann`` and ``Berg Nordmann`` are ``{berg, nordmann}``."""
    return {p for p in _fold(name).replace("-", " ").split() if p}


def surname_of(practitioner_name: str) -> str:
    """The health worker's surname: the last word of the name the event records."""
    words = practitioner_name.split()
    return words[-1] if words else ""


class SurnameCheck:
    """Whether health workers and the patients they looked up share a surname that is not among the
    commonest (``common``): one batched register lookup per call."""

    __slots__ = ("common", "register")

    def __init__(self, register: PersonRegister, common: frozenset[str] | None = None):
        self.register = register
        self.common = common_surnames() if common is None else common

    def __call__(self, pairs: Sequence[tuple[str | None, str | None]]) -> list[bool | None]:
        """Per (practitioner name, patient identifier): True for a shared uncommon surname part, False
        for none, None when it cannot be told (no name in the event, or a patient the register does
        not know). Raises ``RegisterUnavailable`` when the register does not answer."""
        names = self.register.family_names({p for _, p in pairs if p})
        answers: list[bool | None] = []
        for practitioner, patient in pairs:
            family = names.get(patient) if patient else None
            if not practitioner or not practitioner.split() or family is None:
                answers.append(None)
                continue
            shared = _parts(surname_of(practitioner)) & _parts(family)
            answers.append(bool(shared - self.common))
        return answers
