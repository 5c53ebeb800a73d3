"""Just enough FHIR Shorthand to read the HL7 Norway trust-framework reference in place
(``../shared/reference/auditevent/fsh``): aliases, and the ``* path = value`` rules of each ``Instance``
and the ``extension contains`` names of each ``Extension``. Not a FSH compiler: it reads what the tests
compare against, and fails loudly when a file no longer has the expected shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_ALIAS = re.compile(r"^Alias:\s*(\S+)\s*=\s*(\S+)", re.M)
_BLOCK = re.compile(r"^(Instance|Extension|Profile):\s*(\S+)", re.M)
_RULE = re.compile(r"^(\s*)\*\s+(.+?)\s*$")
_COMMENT = re.compile(r"\s+//.*$")


@dataclass
class Block:
    """One ``Instance:``/``Extension:``/``Profile:`` of a FSH file: its keywords and its ``*`` lines."""

    kind: str
    name: str
    keywords: dict[str, str] = field(default_factory=dict)
    rules: list[tuple[str, str]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def value(self, path: str) -> str:
        """The right-hand side of the one ``* path = value`` rule."""
        (found,) = [v for p, v in self.rules if p == path]
        return found

    def only(self, path: str) -> str:
        """The type of the one ``* path only Type`` rule."""
        (found,) = [
            line.split(" only ", 1)[1].split()[0] for line in self.lines if line.startswith(f"* {path} only ")
        ]
        return found


@dataclass
class Fsh:
    aliases: dict[str, str]
    blocks: dict[str, Block]

    def expand(self, value: str) -> str:
        """``$ALIAS#code "display"`` -> ``system#code``; a quoted string -> its text."""
        value = value.strip()
        if value.startswith('"'):
            return value.split('"')[1]
        head = value.split()[0]
        system, _, code = head.partition("#")
        return f"{self.aliases.get(system, system)}#{code}" if code else self.aliases.get(head, head)


def read_fsh(folder: Path) -> Fsh:
    """Every ``*.fsh`` file of ``folder``, as aliases and named blocks."""
    aliases: dict[str, str] = {}
    blocks: dict[str, Block] = {}
    for path in sorted(folder.glob("*.fsh")):
        text = path.read_text(encoding="utf-8")
        aliases.update(dict(_ALIAS.findall(text)))
        current: Block | None = None
        parents: list[tuple[int, str]] = []  # indented rules continue the path of the rule above them
        for line in text.splitlines():
            start = _BLOCK.match(line)
            if start:
                parents = []
                current = Block(start.group(1), start.group(2))
                blocks[current.name] = current
                continue
            if current is None:
                continue
            current.lines.append(line)
            if ":" in line and not line.startswith(("*", " ", "/")):
                key, _, val = line.partition(":")
                current.keywords[key.strip()] = val.strip()
            rule = _RULE.match(line)
            if rule is None:
                continue
            indent, content = len(rule.group(1)), _COMMENT.sub("", rule.group(2))
            while parents and parents[-1][0] >= indent:
                parents.pop()
            prefix = parents[-1][1] + "." if parents else ""
            if " = " in content:
                path, _, value = content.partition(" = ")
                current.rules.append((prefix + path.strip(), value.strip()))
            else:
                parents.append((indent, prefix + content.split()[0]))
    if not blocks:
        raise ValueError(f"no FSH blocks in {folder}")
    return Fsh(aliases, blocks)


def extension_slices(block: Block) -> list[str]:
    """The slice names of an ``Extension``'s ``* extension contains a 1..1 and b 1..1`` rule."""
    text = "\n".join(block.lines)
    match = re.search(r"\*\s*extension contains(.*?)(?:\n\*|\Z)", text, re.S)
    if match is None:
        raise ValueError(f"{block.name} has no 'extension contains' rule")
    return re.findall(r"([A-Za-z][\w-]*)\s+\d+\.\.", match.group(1))
