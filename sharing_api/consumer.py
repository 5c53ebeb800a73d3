"""``dho-share token`` and ``dho-share query``: the consumer side for a hospital or GP developer.

A *profile* (JSON) names the issuer, the client id, the private key file (a JWK) and who the health
worker is (organisation, point of care, HPR number); ``dho-share demo`` writes one for its hospital.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey
from rich.console import Console
from rich.table import Table

from auth.client import DhoClient, TokenError, attestation
from sharing_api.fhir.identifiers import FNR

console = Console()
READ_SCOPE = "dho-share/observation.read"


@dataclass(frozen=True, slots=True)
class Profile:
    issuer: str
    api: str
    client_id: str
    key_path: Path
    organisation: str
    point_of_care: str
    hpr: str | None = None
    scope: str = READ_SCOPE

    @classmethod
    def load(cls, path: Path) -> Profile:
        data = json.loads(path.read_text(encoding="utf-8"))
        key_path = Path(data["key"])
        if not key_path.is_absolute():
            key_path = path.parent / key_path
        return cls(
            issuer=data["issuer"],
            api=data.get("api", data["issuer"]),
            client_id=data["client_id"],
            key_path=key_path,
            organisation=data["organisation"],
            point_of_care=data.get("point_of_care", data["organisation"]),
            hpr=data.get("hpr"),
            scope=data.get("scope", READ_SCOPE),
        )

    def key(self) -> ECKey | OKPKey | RSAKey:
        key = JWKRegistry.import_key(json.loads(self.key_path.read_text(encoding="utf-8")))
        assert isinstance(key, ECKey | OKPKey | RSAKey)
        return key

    def client(self, patient: str | None, purpose: str) -> DhoClient:
        details = attestation(
            legal_entity=self.organisation,
            point_of_care=self.point_of_care,
            patient=(FNR, patient) if patient else None,
            hpr_number=self.hpr,
            purpose_of_use=purpose,
        )
        return DhoClient(
            issuer=self.issuer,
            client_id=self.client_id,
            client_key=self.key(),
            scope=self.scope,
            attestation=details,
        )


profile_option = click.option(
    "--profile",
    "profile_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Consumer profile (JSON): issuer, api, client_id, key, organisation, point_of_care, hpr",
)


@click.command()
@profile_option
@click.option("--patient", help="The patient's FNR the attestation is for")
@click.option(
    "--purpose", default="TREAT", show_default=True, type=click.Choice(["TREAT", "ETREAT", "COC", "BTG"])
)
def token(profile_path: Path, patient: str | None, purpose: str) -> None:
    """Get a DPoP-bound access token and print its claims (the token itself is useless without the
    DPoP key, and stays out of terminals and logs)."""
    client = Profile.load(profile_path).client(patient, purpose)
    try:
        client.access_token()
    except TokenError as exc:
        raise click.ClickException(str(exc)) from exc
    claims = json.loads(base64.urlsafe_b64decode(client.access_token().split(".")[1] + "=="))
    click.echo(json.dumps({"token_type": "DPoP", "claims": claims}, indent=2, ensure_ascii=False))


def _value(resource: dict[str, Any]) -> str:
    if "valueQuantity" in resource:
        q = resource["valueQuantity"]
        return f"{q.get('value')} {q.get('unit', q.get('code', ''))}".strip()
    if "component" in resource:
        return (
            " / ".join(str(c.get("valueQuantity", {}).get("value", "?")) for c in resource["component"])
            + " "
            + str(resource["component"][0].get("valueQuantity", {}).get("unit", ""))
        )
    if "valueCodeableConcept" in resource:
        coding = resource["valueCodeableConcept"].get("coding", [{}])[0]
        return str(coding.get("display", coding.get("code", "")))
    return ""


@click.command()
@profile_option
@click.option("--tenant", required=True, help="The data controller's org.nr (the source)")
@click.option("--patient", required=True, help="The patient's FNR (sent in the form body, never in a URL)")
@click.option("--code", help="A code, e.g. 'http://loinc.org|85354-9' (blood pressure)")
@click.option("--from", "date_from", help="Measurements on or after this date (YYYY-MM-DD)")
@click.option("--to", "date_to", help="Measurements before this date (YYYY-MM-DD)")
@click.option("--lastn", is_flag=True, help="Only the newest value of each measurement type")
@click.option("--count", default=50, show_default=True, help="Page size")
@click.option(
    "--purpose", default="TREAT", show_default=True, type=click.Choice(["TREAT", "ETREAT", "COC", "BTG"])
)
@click.option("--json", "as_json", is_flag=True, help="Print the FHIR Bundle as JSON")
def query(
    profile_path: Path,
    tenant: str,
    patient: str,
    code: str | None,
    date_from: str | None,
    date_to: str | None,
    lastn: bool,
    count: int,
    purpose: str,
    as_json: bool,
) -> None:
    """Search one patient's measurements at a data controller, as the profile's health worker."""
    profile = Profile.load(profile_path)
    client = profile.client(patient, purpose)
    form: list[tuple[str, str]] = [("patient.identifier", f"{FNR}|{patient}")]
    if code:
        form.append(("code", code))
    if date_from:
        form.append(("date", f"ge{date_from}"))
    if date_to:
        form.append(("date", f"lt{date_to}"))
    if not lastn:
        form.append(("_count", str(count)))
    base = f"{profile.api.rstrip('/')}/{tenant}/fhir"
    url = f"{base}/Observation/$lastn" if lastn else f"{base}/Observation/_search"
    try:
        response = client.request("POST", url, data=form)
    except TokenError as exc:
        raise click.ClickException(f"no token: {exc}") from exc
    body = response.json()
    if as_json:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    if response.status_code != 200:
        issues = "; ".join(i.get("diagnostics", "") for i in body.get("issue", []))
        raise click.ClickException(f"{response.status_code}: {issues}")
    table = Table("when", "measurement", "value", "status", title=f"{body.get('total', '?')} measurements")
    for entry in body.get("entry", []):
        r = entry["resource"]
        coding = r["code"]["coding"][0]
        when = r.get("effectiveDateTime") or r.get("effectivePeriod", {}).get("start", "")
        table.add_row(when, coding.get("display", coding["code"]), _value(r), r.get("status", ""))
    console.print(table)


@click.command(name="fetch")
@profile_option
@click.option("--tenant", required=True, help="The data controller whose log to fetch (your own tenant)")
@click.option("--from", "from_seq", default=0, show_default=True, help="First sequence number")
@click.option("--output", "-o", type=click.File("wb"), default="-", help="Where to write the NDJSON export")
def fetch_audit(profile_path: Path, tenant: str, from_seq: int, output: Any) -> None:
    """Download TENANT's audit export from a live server (scope dho-share/audit.read), to verify it with
    ``dho-share audit verify``: ``dho-share audit fetch ... | dho-share audit verify - --public-key K``."""
    profile = Profile.load(profile_path)
    client = DhoClient(
        issuer=profile.issuer,
        client_id=profile.client_id,
        client_key=profile.key(),
        scope="dho-share/audit.read",
    )
    url = f"{profile.api.rstrip('/')}/{tenant}/fhir/AuditEvent/$export?from={from_seq}"
    try:
        response = client.request("GET", url, stream=True)
    except TokenError as exc:
        raise click.ClickException(f"no token: {exc}") from exc
    if response.status_code != 200:
        raise click.ClickException(f"{response.status_code}: {response.text[:300]}")
    for chunk in response.iter_content(chunk_size=1 << 16):
        output.write(chunk)
