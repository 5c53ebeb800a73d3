"""The per-patient disclosure report ("Hvem har sett mine målinger", console.md §5.4).

One line per *episode*: look-ups by the same health worker (or, for a system call, organisation), legal
entity, purpose and result within one hour of the episode's first look-up (the Danish Min Log grouping).
The patient's columns follow the trust-framework business rules (console.md §1.3): the health worker's
**name**, never a national identity number; the legal entity's name; the healthcare service; the
purpose in plain words with emergency access marked; the data categories and how many look-ups, never
a measurement value; and the result, with the reason for a refusal in plain words. The auditor's view
adds the HPR number, ``decision_ref``, whether it was self-selected, and the log indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sharing_api.audit.actions import READ_ACTIONS, AuditAction
from sharing_api.console.reading import EntryView

__all__ = ["DISCLOSED_ACTIONS", "Episode", "episodes"]

DISCLOSED_ACTIONS = frozenset({*READ_ACTIONS, AuditAction.REQUEST_REFUSED})
"""What a patient's disclosure report lists: reads of their measurements and refused attempts (as
``$access-log``)."""

PURPOSE_WORDS = {
    "TREAT": "Behandling",
    "COC": "Samarbeid om behandling",
    "ETREAT": "Akutt behandling (nødrett)",
    "BTG": "Akutt behandling (nødrett, sperre overstyrt)",
}
CATEGORY_WORDS = {
    "vital-signs": "Vitale tegn (blodtrykk, puls, vekt, ...)",
    "survey": "Spørreskjema",
    "laboratory": "Laboratorieprøver",
    "activity": "Aktivitet",
}
REFUSAL_WORDS = {
    "blocked-practitioner": "Ikke vist – du har sperret denne personen",
    "reservation": "Ikke vist – du har reservert deg",
    "no-consent": "Ikke vist – du har ikke samtykket",
    "scope-not-consented": "Ikke vist – utenfor ditt samtykke",
    "no-agreement": "Ikke vist – utenfor avtale",
    "agreement-expired": "Ikke vist – utenfor avtale",
    "agreement-not-yet-valid": "Ikke vist – utenfor avtale",
    "purpose-not-agreed": "Ikke vist – utenfor avtale",
    "scope-not-agreed": "Ikke vist – utenfor avtale",
    "practitioner-not-named": "Ikke vist – personen er ikke navngitt",
}
WINDOW = timedelta(hours=1)


@dataclass(slots=True)
class Episode:
    """One line of the report. ``entries`` are the log entries it groups (oldest first)."""

    start: datetime
    end: datetime
    who: str
    organisation: str
    service: str
    purpose: str | None
    permitted: bool
    refusal: str
    entries: list[EntryView] = field(default_factory=list)

    @property
    def emergency(self) -> bool:
        return self.purpose in ("ETREAT", "BTG")

    @property
    def why(self) -> str:
        return PURPOSE_WORDS.get(self.purpose or "", "Ukjent formål")

    @property
    def what(self) -> str:
        categories = sorted({c for e in self.entries for c in e.categories})
        words = ", ".join(CATEGORY_WORDS.get(c, c) for c in categories) or "Målinger"
        count = len(self.entries)
        return f"{words}; {count} oppslag" if count != 1 else f"{words}; 1 oppslag"

    @property
    def result(self) -> str:
        return "Vist" if self.permitted else self.refusal

    @property
    def hprs(self) -> list[str]:
        return sorted({e.agent_hpr for e in self.entries if e.agent_hpr})

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.entries if e.seq is not None]


def _refusal(view: EntryView) -> str:
    for reason in view.reasons:
        if reason in REFUSAL_WORDS:
            return REFUSAL_WORDS[reason]
    return "Ikke vist – avvist"


def episodes(views: list[EntryView]) -> list[Episode]:
    """Group a patient's entries (any order) into episodes, newest first (module docstring)."""
    found: list[Episode] = []
    open_: dict[tuple[str, str, str | None, bool], Episode] = {}
    for view in sorted(views, key=lambda v: (v.recorded, v.seq or 0)):
        if view.action not in DISCLOSED_ACTIONS:
            continue
        who = view.practitioner_name or (
            f"System hos {view.organisation_name}" if view.organisation_name else "Ukjent system"
        )
        organisation = view.organisation_name or view.organisation or "Ukjent virksomhet"
        key = (view.agent_hpr or who, view.organisation or organisation, view.purpose, view.permitted)
        episode = open_.get(key)
        if episode is None or view.recorded - episode.start > WINDOW:
            episode = Episode(
                start=view.recorded,
                end=view.recorded,
                who=who,
                organisation=organisation,
                service=view.healthcare_service or "",
                purpose=view.purpose,
                permitted=view.permitted,
                refusal="" if view.permitted else _refusal(view),
            )
            open_[key] = episode
            found.append(episode)
        episode.end = view.recorded
        episode.entries.append(view)
    return sorted(found, key=lambda ep: ep.start, reverse=True)
