"""``dho-share token``, ``query`` and ``publish``: the client side for hospital, GP and DHO developers.

A *profile* (JSON) names the issuer, the client id, the private key file (a JWK), the scope and who
the health worker is (organisation, point of care, HPR number); ``dho-share demo`` writes one for its
hospital (reading) and one for its municipality (publishing, with ``tenant``).

Failures are one line on stderr and exit status 1: a server that cannot be reached says which URL and
why (no traceback), a refusal says the status and the server's diagnostics.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
import requests
from joserfc.jwk import ECKey, JWKRegistry, OKPKey, RSAKey

from auth.client import DhoClient, TokenError, attestation
from sharing_api.fhir.identifiers import DNR, FNR, check_patient_identifier, is_valid_dnr
from sharing_api.tables import print_json, print_rows

READ_SCOPE = "dho-share/observation.read"
PLAN_READ_SCOPE = "dho-share/careplan.read"
WRITE_SCOPE = "dho-share/observation.write"
FHIR_JSON = "application/fhir+json"
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


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
    tenant: str | None = None

    @classmethod
    def load(cls, path: Path) -> Profile:
        """The profile at ``path``; a usage error naming the field that is missing or the JSON fault."""
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.BadParameter(f"{path} is not JSON: {exc}", param_hint="'--profile'") from exc
        lacking = [name for name in ("issuer", "client_id", "key", "organisation") if name not in data]
        if lacking:
            raise click.BadParameter(
                f"{path} lacks {', '.join(f'`{n}`' for n in lacking)}", param_hint="'--profile'"
            )
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
            tenant=data.get("tenant"),
        )

    def key(self) -> ECKey | OKPKey | RSAKey:
        key = JWKRegistry.import_key(json.loads(self.key_path.read_text(encoding="utf-8")))
        assert isinstance(key, ECKey | OKPKey | RSAKey)
        return key

    def fhir_base(self, tenant: str | None) -> str:
        """``<api>/<tenant>/fhir``; the tenant given, else the profile's, else its own organisation."""
        return f"{self.api.rstrip('/')}/{tenant or self.tenant or self.organisation}/fhir"

    def publisher(self) -> DhoClient:
        """A client for writing: the system publishes on its own behalf (no attestation)."""
        return DhoClient(
            issuer=self.issuer, client_id=self.client_id, client_key=self.key(), scope=self.scope
        )

    def client(self, patient: str | None, purpose: str, scope: str | None = None) -> DhoClient:
        details = attestation(
            legal_entity=self.organisation,
            point_of_care=self.point_of_care,
            patient=_patient_identifier(patient) if patient else None,
            hpr_number=self.hpr,
            purpose_of_use=purpose,
        )
        return DhoClient(
            issuer=self.issuer,
            client_id=self.client_id,
            client_key=self.key(),
            scope=scope or self.scope,
            attestation=details,
        )


def _patient_identifier(number: str) -> tuple[str, str]:
    """(system, value) of a fødselsnummer or D-nummer; a usage error naming what is wrong otherwise
    (the number itself is not repeated)."""
    system = DNR if is_valid_dnr(number) else FNR
    problem = check_patient_identifier(system, number)
    if problem:
        raise click.BadParameter(
            f"not a valid national identity number (fødselsnummer or D-nummer): {problem}",
            param_hint="'--patient'",
        )
    return (system, number)


def unreachable(url: str, exc: requests.RequestException) -> click.ClickException:
    found = _ERRNO.search(str(exc))
    reason = found.group(1).strip() if found else type(exc).__name__
    if isinstance(exc, requests.Timeout):
        reason = "no answer in time"
    return click.ClickException(f"cannot reach {url}: {reason} (is the server running?)")


def send(client: DhoClient, method: str, url: str, **kwargs: Any) -> requests.Response:
    """``client.request`` with every failure as one line: the token service's refusal, or which URL
    could not be reached and why."""
    try:
        return client.request(method, url, **kwargs)
    except TokenError as exc:
        raise click.ClickException(f"no token from {client.issuer}: {exc}") from exc
    except requests.HTTPError as exc:  # the token service's discovery document
        raise click.ClickException(f"{client.issuer}: {exc}") from exc
    except requests.RequestException as exc:
        where = getattr(exc.request, "url", None) or url
        raise unreachable(str(where).split("?", 1)[0], exc) from exc


def body_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise click.ClickException(
            f"{response.status_code} from {response.url}: the answer is not JSON ({response.text[:120]!r})"
        ) from exc


def diagnostics_of(outcome: dict[str, Any]) -> str:
    """An OperationOutcome's issues in one line: diagnostics, with the element they name."""
    parts = []
    for issue in outcome.get("issue", []):
        text = issue.get("diagnostics") or issue.get("code", "")
        where = ", ".join(issue.get("expression", []))
        parts.append(f"{text} ({where})" if where else text)
    return "; ".join(parts)


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
        raise click.ClickException(f"no token from {client.issuer}: {exc}") from exc
    except requests.RequestException as exc:
        raise unreachable(str(getattr(exc.request, "url", None) or client.issuer), exc) from exc
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
@click.option(
    "--careplan",
    is_flag=True,
    help="The patient's active treatment plan, its thresholds and the latest measurements against them",
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
    careplan: bool,
    as_json: bool,
) -> None:
    """Search one patient's measurements at a data controller, as the profile's health worker."""
    system, _ = _patient_identifier(patient)
    profile = Profile.load(profile_path)
    if careplan:
        _careplan(profile, tenant, (system, patient), purpose, as_json)
        return
    client = profile.client(patient, purpose)
    form: list[tuple[str, str]] = [("patient.identifier", f"{system}|{patient}")]
    if code:
        form.append(("code", code))
    if date_from:
        form.append(("date", f"ge{date_from}"))
    if date_to:
        form.append(("date", f"lt{date_to}"))
    if not lastn:
        form.append(("_count", str(count)))
    base = profile.fhir_base(tenant)
    url = f"{base}/Observation/$lastn" if lastn else f"{base}/Observation/_search"
    response = send(client, "POST", url, data=form)
    body = body_of(response)
    if as_json:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    if response.status_code != 200:
        raise click.ClickException(f"{response.status_code} from {url}: {diagnostics_of(body)}")
    rows = []
    for entry in body.get("entry", []):
        r = entry["resource"]
        coding = r["code"]["coding"][0]
        when = r.get("effectiveDateTime") or r.get("effectivePeriod", {}).get("start", "")
        rows.append([when, coding.get("display", coding["code"]), _value(r), r.get("status", ""), r["id"]])
    print_rows(
        ["when", "measurement", "value", "status", "id"], rows, title=f"{body.get('total', '?')} measurements"
    )


def _ok(response: requests.Response, url: str) -> Any:
    body = body_of(response)
    if response.status_code != 200:
        raise click.ClickException(f"{response.status_code} from {url}: {diagnostics_of(body)}")
    return body


def _careplan(profile: Profile, tenant: str, patient: tuple[str, str], purpose: str, as_json: bool) -> None:
    """``query --careplan``: the active plans (``POST CarePlan/_search``), their Goals, and
    ``Observation/$evaluate`` (docs/careplans.md)."""
    scopes = " ".join(sorted({*profile.scope.split(), READ_SCOPE, PLAN_READ_SCOPE}))
    client = profile.client(patient[1], purpose, scope=scopes)
    base = profile.fhir_base(tenant)
    form = [("patient.identifier", f"{patient[0]}|{patient[1]}"), ("status", "active")]
    url = f"{base}/CarePlan/_search"
    plans = _ok(send(client, "POST", url, data=form), url)
    resources = [e["resource"] for e in plans.get("entry", [])]
    goals = []
    for plan in resources:
        for ref in plan.get("goal", []):
            goal_url = f"{base}/{ref['reference']}"
            goals.append(_ok(send(client, "GET", goal_url), goal_url))
    url = f"{base}/Observation/$evaluate"
    evaluation = _ok(send(client, "POST", url, data=form[:1]), url)
    if as_json:
        click.echo(
            json.dumps(
                {"plans": plans, "goals": goals, "evaluation": evaluation}, indent=2, ensure_ascii=False
            )
        )
        return
    for plan in resources:
        repeat_rows = []
        for activity in plan.get("activity", []):
            detail = activity.get("detail", {})
            coding = detail.get("code", {}).get("coding", [{}])[0]
            repeat = detail.get("scheduledTiming", {}).get("repeat", {})
            how_often = f"{repeat.get('frequency')} per {repeat.get('period')} {repeat.get('periodUnit')}"
            repeat_rows.append(
                [coding.get("display", coding.get("code", "")), how_often, detail.get("status", "")]
            )
        start = plan.get("period", {}).get("start", "?")
        version = plan["meta"]["versionId"]
        title = f"{plan.get('title', 'CarePlan')} ({plan['status']} from {start}, version {version})"
        print_rows(["measure", "how often", "status"], repeat_rows, title=title)
    rows = []
    for parameter in evaluation.get("parameter", []):
        if parameter["name"] != "evaluation":
            continue
        part = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameter["part"]}
        value = part.get("value", {})
        latest = f"{value.get('value')} {value.get('unit', '')}".strip() if value else ""
        rows.append(
            [
                part["measure"].get("display") or part["measure"]["code"],
                part["target"],
                part["status"],
                latest,
                part.get("effective", ""),
                part.get("since", ""),
            ]
        )
    print_rows(
        ["measure", "target", "status", "latest", "when", "since"],
        rows,
        title=f"{len(resources)} active plans; latest measurements against their thresholds",
    )


def _entry_rows(sent: dict[str, Any], body: dict[str, Any]) -> list[list[str]]:
    """One row per Bundle entry: what was sent (fullUrl), the status, where it is, and any outcome."""
    rows = []
    sent_entries = sent.get("entry", [])
    for n, entry in enumerate(body.get("entry", [])):
        answer = entry.get("response", {})
        full_url = entry.get("fullUrl") or (
            sent_entries[n].get("fullUrl", "") if n < len(sent_entries) else ""
        )
        outcome = answer.get("outcome")
        rows.append(
            [
                str(n),
                full_url,
                answer.get("status", ""),
                answer.get("location", ""),
                diagnostics_of(outcome) if outcome else "",
            ]
        )
    return rows


@click.command()
@profile_option
@click.argument("source", metavar="FILE|-", type=click.File("rb"))
@click.option("--tenant", help="The data controller to publish into (default: the profile's tenant)")
@click.option("--json", "as_json", is_flag=True, help="Print the server's response as JSON")
def publish(profile_path: Path, source: IO[bytes], tenant: str | None, as_json: bool) -> None:
    """Publish an Observation or a batch/transaction Bundle (FILE, or - for stdin) with the profile's
    client (scope dho-share/observation.write). Prints the outcome of every entry; exits 1 unless all
    were stored."""
    raw = source.read()
    try:
        sent = json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from exc
    kind = sent.get("resourceType") if isinstance(sent, dict) else None
    if kind not in ("Observation", "Bundle"):
        raise click.BadParameter(
            f"a resource of type {kind!r}: expected Observation or Bundle", param_hint="FILE"
        )
    profile = Profile.load(profile_path)
    base = profile.fhir_base(tenant)
    url = f"{base}/Observation" if kind == "Observation" else base
    response = send(profile.publisher(), "POST", url, data=raw, headers={"Content-Type": FHIR_JSON})
    body = body_of(response)
    if as_json:
        print_json(body)
    elif body.get("resourceType") == "Bundle":
        print_rows(["entry", "fullUrl", "status", "location", "outcome"], _entry_rows(sent, body))
    else:
        where = response.headers.get("Location", "")
        outcome = diagnostics_of(body) if body.get("resourceType") == "OperationOutcome" else ""
        print_rows(
            ["entry", "status", "location", "outcome"], [[kind, str(response.status_code), where, outcome]]
        )
    statuses = [e.get("response", {}).get("status", "") for e in body.get("entry", [])] or [
        str(response.status_code)
    ]
    if response.status_code >= 300 or not all(s.startswith("2") for s in statuses):
        raise SystemExit(1)


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
    url = f"{profile.fhir_base(tenant)}/AuditEvent/$export?from={from_seq}"
    response = send(client, "GET", url, stream=True)
    if response.status_code != 200:
        raise click.ClickException(f"{response.status_code} from {url.split('?')[0]}: {response.text[:300]}")
    for chunk in response.iter_content(chunk_size=1 << 16):
        output.write(chunk)
