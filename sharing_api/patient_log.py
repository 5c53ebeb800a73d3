"""``dho-share access-log``: the patient's own access log as a patient reads it (issue 9, the demo).

Who looked at my measurements, from which organisation, when (local time) and why, in Norwegian
(bokmål) by default (``--lang en`` for English); emergency access (ETREAT, BTG) is marked. It calls
``GET /{orgnr}/fhir/AuditEvent/$access-log`` with the patient's own token: their ``pid`` at security
level 4, which in production comes from the national login (ID-porten via Helsenorge).

The demo has no national login, so a *patient profile* names a local stand-in for it: the token
service's own signing-key file (``signing_keys``), with which this command signs the patient's token
itself. That works only on the machine that holds the server's keys; it is for the demo and tests,
never a way in for anyone else.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click
from joserfc.jwk import ECKey

from auth.client import dpop_proof
from sharing_api.consumer import body_of, diagnostics_of, unreachable
from sharing_api.tables import print_json, print_rows

AUDIT_SCOPE = "dho-share/audit.read"
EMERGENCY = frozenset({"ETREAT", "BTG"})

WORDS: dict[str, dict[str, str]] = {
    "nb": {
        "when": "når",
        "who": "hvem",
        "organisation": "virksomhet",
        "what": "hva",
        "why": "hvorfor",
        "emergency": "NØDTILGANG",
        "refused": "(avvist)",
        "health worker": "helsepersonell",
        "title": "Hvem har sett på målingene dine",
        "none": "Ingen har sett på målingene dine.",
        "observation.read": "leste en måling",
        "observation.search": "søkte i målingene",
        "observation.lastn": "så på de siste målingene",
        "observation.history": "leste historikken til en måling",
        "observation.evaluate": "sammenlignet målingene med behandlingsplanen",
        "careplan.read": "leste behandlingsplanen",
        "careplan.history": "leste historikken til behandlingsplanen",
        "careplan.search": "så etter behandlingsplaner",
        "goal.read": "leste et mål i behandlingsplanen",
        "goal.history": "leste historikken til et mål i behandlingsplanen",
        "request.refused": "prøvde å se, men ble avvist",
        "TREAT": "behandling",
        "ETREAT": "akutt behandling",
        "COC": "oppfølging av behandlingen",
        "BTG": 'nødtilgang ("glassknusing")',
    },
    "en": {
        "when": "when",
        "who": "who",
        "organisation": "organisation",
        "what": "what",
        "why": "why",
        "emergency": "EMERGENCY ACCESS",
        "refused": "(refused)",
        "health worker": "health worker",
        "title": "Who has looked at your measurements",
        "none": "Nobody has looked at your measurements.",
        "observation.read": "read a measurement",
        "observation.search": "searched the measurements",
        "observation.lastn": "looked at the latest measurements",
        "observation.history": "read the history of a measurement",
        "observation.evaluate": "checked the measurements against the treatment plan",
        "careplan.read": "read the treatment plan",
        "careplan.history": "read the history of the treatment plan",
        "careplan.search": "looked up the treatment plans",
        "goal.read": "read a goal of the treatment plan",
        "goal.history": "read the history of a goal of the treatment plan",
        "request.refused": "tried to look, and was refused",
        "TREAT": "treatment",
        "ETREAT": "emergency treatment",
        "COC": "coordination of care",
        "BTG": 'emergency access ("break the glass")',
    },
}


@dataclass(frozen=True, slots=True)
class PatientProfile:
    """A patient for the demo: who (``pid``), where (``api``, ``tenant``), and the stand-in issuer."""

    issuer: str
    api: str
    tenant: str
    pid: str
    signing_keys: Path
    organisations: dict[str, str]  # org.nr -> name, where known

    @classmethod
    def load(cls, path: Path) -> PatientProfile:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        lacking = [n for n in ("issuer", "api", "tenant", "pid", "signing_keys") if n not in data]
        if lacking:
            raise click.BadParameter(
                f"{path} lacks {', '.join(f'`{n}`' for n in lacking)}", param_hint="'--profile'"
            )
        keys = Path(data["signing_keys"])
        return cls(
            issuer=data["issuer"],
            api=data["api"],
            tenant=data["tenant"],
            pid=data["pid"],
            signing_keys=keys if keys.is_absolute() else path.parent / keys,
            organisations=dict(data.get("organisations", {})),
        )

    def token(self, dpop_key: ECKey) -> str:
        """The patient's token from the stand-in for the national login (see the module docstring)."""
        from auth.keys import load_keyset
        from auth.tokens import issue_access_token

        if not self.signing_keys.exists():
            raise click.ClickException(f"no signing keys at {self.signing_keys} (run `dho-share demo` first)")
        return issue_access_token(
            load_keyset(self.signing_keys),
            issuer=self.issuer,
            client_id="demo-helsenorge",
            scopes=[AUDIT_SCOPE],
            jkt=dpop_key.thumbprint(),
            now=time.time(),
            pid=self.pid,
            security_level="4",
            subject=f"demo-person-{self.pid[-4:]}",
        ).token


def _rows(
    accesses: list[dict[str, Any]], words: dict[str, str], zone: ZoneInfo, orgs: dict[str, str]
) -> list[list[str]]:
    rows = []
    for a in accesses:
        when = datetime.fromisoformat(a["when"]).astimezone(zone).strftime("%d.%m.%Y %H:%M")
        hpr, name = a.get("healthWorkerHpr"), a.get("healthWorkerName")
        who = name or (f"{words['health worker']} (HPR {hpr})" if hpr else "")
        org = a.get("organisation") or ""
        purpose = a.get("why") or ""
        why = words.get(purpose, purpose)
        if purpose in EMERGENCY:
            why = f"{words['emergency']}: {why}"
        what = words.get(a.get("action", ""), a.get("what", ""))
        if not a.get("allowed", True) and a.get("action") != "request.refused":
            what = f"{what} {words['refused']}"
        rows.append([when, who, f"{orgs[org]} ({org})" if org in orgs else org, what, why])
    return rows


@click.command(name="access-log")
@click.option(
    "--profile",
    "profile_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Patient profile (JSON): issuer, api, tenant, pid, signing_keys (the demo's stand-in login)",
)
@click.option("--lang", type=click.Choice(["nb", "en"]), default="nb", show_default=True)
@click.option("--tz", default="Europe/Oslo", show_default=True, help="Time zone of the times shown")
@click.option("--json", "as_json", is_flag=True, help="Print the server's answer as JSON")
def access_log(profile_path: Path, lang: str, tz: str, as_json: bool) -> None:
    """Show the patient's access log: who looked at their measurements, where from, when and why."""
    import requests

    profile = PatientProfile.load(profile_path)
    zone = ZoneInfo(tz)
    dpop_key = ECKey.generate_key("P-256", private=True)
    token = profile.token(dpop_key)
    url = f"{profile.api.rstrip('/')}/{profile.tenant}/fhir/AuditEvent/$access-log"
    proof = dpop_proof(dpop_key, method="GET", url=url, access_token=token)
    try:
        response = requests.get(url, headers={"Authorization": f"DPoP {token}", "DPoP": proof}, timeout=10)
    except requests.RequestException as exc:
        raise unreachable(url, exc) from exc
    body = body_of(response)
    if response.status_code != 200:
        raise click.ClickException(f"{response.status_code} from {url}: {diagnostics_of(body)}")
    if as_json:
        print_json(body)
        return
    words = WORDS[lang]
    accesses = body.get("accesses", [])
    if not accesses:
        click.echo(words["none"])
        return
    print_rows(
        [words["when"], words["who"], words["organisation"], words["what"], words["why"]],
        _rows(accesses, words, zone, profile.organisations),
        title=words["title"],
    )
