"""``dho-share``: the operator's command line (product.md §7)."""

from __future__ import annotations

import json
import os
import random
import shlex
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
import redis
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from sharing_api import consumer, patient_log
from sharing_api.audit import cli as audit_cli
from sharing_api.console import cli as console_cli
from sharing_api.serving import SERVERS
from sharing_api.settings import Settings
from sharing_api.store.clients import ClientRegistry
from sharing_api.store.engine import analyze, make_engine, upgrade
from sharing_api.tables import print_json, print_rows

if TYPE_CHECKING:
    from sharing_api.seed import Patient
    from sharing_api.services import Services

console = Console(stderr=True)
DEMO_TENANT = ("921234562", "Demo kommune (DHO)")  # a synthetic org.nr with a valid control digit


def _settings() -> Settings:
    return Settings()


json_option = click.option("--json", "as_json", is_flag=True, help="Print the list as JSON")


@click.group()
@click.version_option(package_name="dho-share", prog_name="dho-share")
def main() -> None:
    """dho-share: share home-monitoring measurements between health organisations."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations to DHO_DATABASE_URL."""
    upgrade(_settings().database_url)
    console.print("database is at the newest migration")


@main.group()
def tenants() -> None:
    """Data controllers served here (one or many)."""


@tenants.command("add")
@click.argument("orgnr")
@click.option("--name", required=True, help="The organisation's name")
@click.option("--resh", multiple=True, help="A RESH id that belongs to this controller (repeatable)")
@click.option(
    "--allow-unknown-codes",
    is_flag=True,
    help="Store measurement codes outside the vital-sign table (their units must still be valid UCUM)",
)
def tenants_add(orgnr: str, name: str, resh: tuple[str, ...], allow_unknown_codes: bool) -> None:
    """Serve ORGNR's data under /ORGNR/fhir."""
    from sharing_api.store.tenants import TenantDirectory

    try:
        new = TenantDirectory(make_engine(_settings().database_url)).add(
            orgnr, name, resh_ids=frozenset(resh), allow_unknown_codes=allow_unknown_codes
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ORGNR") from exc
    console.print(f"{'added' if new else 'updated'} tenant {orgnr} ({name})")


@tenants.command("list")
@json_option
def tenants_list(as_json: bool) -> None:
    """List the tenants."""
    from sharing_api.store.tenants import TenantDirectory

    found = TenantDirectory(make_engine(_settings().database_url)).all()
    if as_json:
        print_json([{"orgnr": t.orgnr, "name": t.name, "resh_ids": sorted(t.resh_ids)} for t in found])
        return
    print_rows(
        ["orgnr", "name", "RESH ids"], [[t.orgnr, t.name, ", ".join(sorted(t.resh_ids))] for t in found]
    )


@main.group()
def keys() -> None:
    """The token service's signing keys."""


@keys.command("rotate")
def keys_rotate() -> None:
    """Sign new tokens with a fresh key; the old key stays in the JWKS until its last token expires.

    Running workers pick the new file up within a second (sharing_api.keyfiles.KeysetFile).
    """
    import time

    from auth.keys import save_keyset
    from sharing_api.keyfiles import load_or_create

    settings = _settings()
    current = load_or_create(settings.signing_keys_path)
    rotated = current.rotate(now=time.time(), keep_published_for=settings.token_lifetime + 60)
    save_keyset(rotated, settings.signing_keys_path)
    console.print(
        f"signing with {rotated.kid}; {current.kid} stays published for {settings.token_lifetime + 60} s"
    )


@main.group()
def clients() -> None:
    """Client systems allowed to ask the token service for tokens."""


@clients.command("add")
@click.argument("client_id")
@click.option("--org", "orgnr", required=True, help="The legal entity's org.nr the client belongs to")
@click.option(
    "--point-of-care", help="Org.nr of the point of care (underenhet), if the client is bound to one"
)
@click.option(
    "--jwks",
    "jwks_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Public JWKS (not with --auditor)",
)
@click.option("--scope", "scopes", multiple=True, help="An allowed scope (repeatable)")
@click.option("--name", default="", help="A readable name")
@click.option(
    "--auditor",
    is_flag=True,
    help="An auditor of ORGNR's log: make its key and profile (scope dho-share/audit.read) under --out",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where --auditor writes the private key and profile (default: var/clients beside the signing keys)",
)
def clients_add(
    client_id: str,
    orgnr: str,
    point_of_care: str | None,
    jwks_path: str | None,
    scopes: tuple[str, ...],
    name: str,
    auditor: bool,
    out_dir: Path | None,
) -> None:
    """Register CLIENT_ID with its public keys (a JWKS file) and allowed scopes; or, with --auditor, make
    an auditor's key pair and profile for ``dho-share audit fetch`` and register its public key."""
    import json

    from auth.tokens import SCOPES
    from sharing_api.store.clients import ClientRegistry

    if auditor:
        if jwks_path or scopes:
            raise click.UsageError("--auditor makes its own key and scope: leave out --jwks and --scope")
        _add_auditor(client_id, orgnr, name, out_dir)
        return
    if not jwks_path or not scopes:
        raise click.UsageError("--jwks and at least one --scope are needed (or --auditor)")
    unknown = sorted(set(scopes) - SCOPES)
    if unknown:
        raise click.BadParameter(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(SCOPES))}")
    try:
        jwks = json.loads(Path(jwks_path).read_text(encoding="utf-8"))
        new = ClientRegistry(make_engine(_settings().database_url)).add(
            client_id,
            orgnr=orgnr,
            jwks=jwks,
            scopes=frozenset(scopes),
            point_of_care=point_of_care,
            name=name,
        )
    except (ValueError, json.JSONDecodeError) as exc:
        raise click.BadParameter(str(exc)) from exc
    console.print(f"{'registered' if new else 'updated'} client {client_id} for {orgnr}")


AUDIT_SCOPE = "dho-share/audit.read"


def _add_auditor(client_id: str, orgnr: str, name: str, out_dir: Path | None) -> None:
    """An auditor's client: a fresh key (with a ``kid``), its profile, and the registration."""
    from sharing_api.fhir.identifiers import is_valid_orgnr
    from sharing_api.store.clients import ClientRegistry

    if not is_valid_orgnr(orgnr):
        raise click.BadParameter(f"{orgnr} is not a valid organisasjonsnummer", param_hint="'--org'")
    settings = _settings()
    directory = out_dir or settings.signing_keys_path.parent / "clients"
    directory.mkdir(parents=True, exist_ok=True)
    profile = directory / f"{client_id}.json"
    if profile.exists():
        raise click.ClickException(f"{profile} exists: remove it or choose another --out")
    key_path = _client_with_fresh_key(
        directory, ClientRegistry(make_engine(settings.database_url)), client_id, orgnr, {AUDIT_SCOPE}
    )
    _write_profile(
        profile,
        issuer=settings.issuer_url,
        api=settings.base_url,
        client_id=client_id,
        key=key_path.name,
        organisation=orgnr,
        tenant=orgnr,
        scope=AUDIT_SCOPE,
    )
    console.print(
        f"registered auditor {client_id}{f' ({name})' if name else ''} for {orgnr}; profile {profile}"
    )
    click.echo(
        f"dho-share audit fetch --profile {profile} --tenant {orgnr} "
        f"| dho-share audit verify - --public-key AUDIT_PUBLIC_KEY.pem"
    )


@clients.command("list")
@json_option
def clients_list(as_json: bool) -> None:
    """List registered clients with the ``kid`` of each public key ("(none)" for a key without one)."""
    from sharing_api.store.clients import ClientRegistry

    found = ClientRegistry(make_engine(_settings().database_url)).all()
    if as_json:
        print_json(
            [
                {
                    "client_id": c.client_id,
                    "orgnr": c.orgnr,
                    "point_of_care": c.point_of_care,
                    "scopes": sorted(c.scopes),
                    "enabled": c.enabled,
                    "kids": [k.get("kid") for k in c.jwks["keys"]],
                }
                for c in found
            ]
        )
        return
    print_rows(
        ["client_id", "org.nr", "point of care", "scopes", "enabled", "key ids (kid)"],
        [
            [
                c.client_id,
                c.orgnr,
                c.point_of_care or "",
                " ".join(sorted(c.scopes)),
                str(c.enabled),
                ", ".join(str(k.get("kid", "(none)")) for k in c.jwks["keys"]),
            ]
            for c in found
        ],
    )


@clients.command("disable")
@click.argument("client_id")
def clients_disable(client_id: str) -> None:
    """Stop issuing tokens to CLIENT_ID."""
    from sharing_api.store.clients import ClientRegistry

    if not ClientRegistry(make_engine(_settings().database_url)).set_enabled(client_id, False):
        raise click.BadParameter(f"no client {client_id!r}")
    console.print(f"disabled client {client_id}")


@clients.command("enable")
@click.argument("client_id")
def clients_enable(client_id: str) -> None:
    """Issue tokens to CLIENT_ID again."""
    from sharing_api.store.clients import ClientRegistry

    if not ClientRegistry(make_engine(_settings().database_url)).set_enabled(client_id, True):
        raise click.BadParameter(f"no client {client_id!r}")
    console.print(f"enabled client {client_id}")


@main.group()
def agreements() -> None:
    """Sharing agreements: which organisation may read which controller's data, for what."""


@agreements.command("add")
@click.option("--controller", required=True, help="The data controller's org.nr (a tenant)")
@click.option("--consumer", required=True, help="The consuming organisation's org.nr (legal entity)")
@click.option(
    "--category",
    "categories",
    multiple=True,
    default=("vital-signs", "survey"),
    show_default=True,
    help="A data category shared (observation-category code; repeatable)",
)
@click.option(
    "--write-category",
    "write_categories",
    multiple=True,
    help="A shared category the consumer may also change, e.g. plan (repeatable)",
)
@click.option(
    "--purpose",
    "purposes",
    multiple=True,
    default=("TREAT", "ETREAT", "COC"),
    show_default=True,
    type=click.Choice(["TREAT", "ETREAT", "COC", "BTG"]),
    help="A purpose of use covered (repeatable)",
)
@click.option("--from", "valid_from", type=click.DateTime(), help="In force from (default: now)")
@click.option("--to", "valid_to", type=click.DateTime(), help="In force until (default: until ended)")
def agreements_add(
    controller: str,
    consumer: str,
    categories: tuple[str, ...],
    write_categories: tuple[str, ...],
    purposes: tuple[str, ...],
    valid_from: datetime | None,
    valid_to: datetime | None,
) -> None:
    """Let CONSUMER read CONTROLLER's data of these categories for these purposes."""
    from consent.model import PurposeOfUse
    from sharing_api.fhir.dates import LOCAL_ZONE
    from sharing_api.store.policy import PolicyStore

    def aware(moment: datetime | None) -> datetime | None:
        return moment.replace(tzinfo=LOCAL_ZONE) if moment and moment.tzinfo is None else moment

    engine = make_engine(_settings().database_url)
    try:
        agreement = PolicyStore(engine, lambda: int(datetime.now(UTC).timestamp() * 1e6)).add_agreement(
            controller=controller,
            consumer=consumer,
            categories=frozenset(categories),
            write_categories=frozenset(write_categories),
            purposes=frozenset(PurposeOfUse(p) for p in purposes),
            valid_from=aware(valid_from) or datetime.now(UTC),
            valid_to=aware(valid_to),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    finally:
        engine.dispose()
    console.print(
        f"agreement {agreement.id}: {consumer} may read {controller}'s {', '.join(sorted(categories))}"
    )


@agreements.command("list")
@click.option("--controller", help="Only this controller's agreements")
@json_option
def agreements_list(controller: str | None, as_json: bool) -> None:
    """List agreements (whole ids: ``agreements end`` takes them as printed)."""
    from sharing_api.store.policy import PolicyStore

    found = PolicyStore(make_engine(_settings().database_url), lambda: 0).agreements(controller=controller)
    if as_json:
        print_json(
            [
                {
                    "id": a.id,
                    "controller": a.controller,
                    "consumer": a.consumer,
                    "categories": sorted(a.categories),
                    "purposes": sorted(a.purposes),
                    "from": a.period.start.isoformat() if a.period.start else None,
                    "to": a.period.end.isoformat() if a.period.end else None,
                }
                for a in found
            ]
        )
        return
    print_rows(
        ["id", "controller", "consumer", "categories", "purposes", "from", "to"],
        [
            [
                a.id,
                a.controller,
                a.consumer,
                " ".join(sorted(a.categories)),
                " ".join(sorted(a.purposes)),
                a.period.start.isoformat() if a.period.start else "",
                a.period.end.isoformat() if a.period.end else "",
            ]
            for a in found
        ],
    )


@agreements.command("end")
@click.argument("agreement_id")
def agreements_end(agreement_id: str) -> None:
    """End an agreement now (it is kept for the record)."""
    from sharing_api.store.policy import PolicyStore

    if not PolicyStore(make_engine(_settings().database_url), lambda: 0).end_agreement(
        agreement_id, datetime.now(UTC)
    ):
        raise click.BadParameter(f"no agreement {agreement_id!r}")
    console.print(f"ended agreement {agreement_id}")


def _seed(settings: Settings, tenant_orgnr: str, patients: int, days: int, seed: int) -> list[str]:
    from sharing_api.app import build_services
    from sharing_api.seed import batches, make_patient, series

    svc = build_services(settings)
    record = svc.tenants.get(tenant_orgnr)
    if record is None:
        raise click.BadParameter(
            f"tenant {tenant_orgnr} is not registered (dho-share tenants add)", param_hint="--tenant"
        )
    rng = random.Random(seed)  # noqa: S311 (reproducible synthetic data, not secrets)
    people = [make_patient(rng) for _ in range(patients)]
    end = datetime.now(UTC)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    stored = plans = 0
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeding patients", total=patients)
        for person in people:
            for bundle in batches(series(person, tenant_orgnr, days, rng, end), 500):
                result = svc.publisher.bundle(record, bundle, base="")
                stored += sum(
                    1 for e in result["entry"] if e["response"]["status"].startswith(("200", "201"))
                )
            plans += _seed_plan(svc, tenant_orgnr, person, end - timedelta(days=days))
            progress.advance(task)
    analyze(svc.engine)  # a bulk load: fresh planner statistics before anyone searches (issue 13)
    svc.engine.dispose()
    console.print(
        f"{stored} observations and {plans} plans for {patients} patients over {days} days "
        f"in tenant {tenant_orgnr}"
    )
    return [p.fnr for p in people]


def _seed_plan(svc: Services, tenant: str, person: Patient, start: datetime) -> int:
    """A self-treatment plan with thresholds for ``person``, unless they have an active plan (issue 11)."""
    from sharing_api.careplans.validation import validate_careplan, validate_goal
    from sharing_api.fhir.identifiers import FNR
    from sharing_api.seed import careplan_for, goal_for
    from sharing_api.store.careplans import SYSTEM

    patient = (FNR, person.fnr)
    if svc.plans.active_plans(tenant, patient):
        return 0
    goal = svc.plans.create(tenant, validate_goal(goal_for(person)), SYSTEM)
    svc.plans.create(tenant, validate_careplan(careplan_for(person, tenant, goal.id, start)), SYSTEM)
    return 1


@main.command()
@click.option("--tenant", "tenant_orgnr", required=True, help="The tenant's org.nr")
@click.option("--patients", default=10, show_default=True, type=click.IntRange(1))
@click.option("--days", default=30, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same data)")
def seed(tenant_orgnr: str, patients: int, days: int, seed: int) -> None:
    """Publish realistic synthetic measurements (synthetic FNRs only)."""
    _seed(_settings(), tenant_orgnr, patients, days, seed)


server_option = click.option(
    "--server",
    type=click.Choice(SERVERS),
    default=SERVERS[0],
    show_default=True,
    envvar="DHO_SERVER",
    help="the HTTP server (also DHO_SERVER): granian spends about half of gunicorn's CPU per request",
)


def _bind_address(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as a host and a port."""
    host, colon, port = bind.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{bind!r} is not HOST:PORT", param_hint="'--bind' / DHO_BIND")
    return host.removeprefix("[").removesuffix("]"), int(port)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option(
    "--bind",
    envvar="DHO_BIND",
    metavar="HOST:PORT",
    help="the host and port in one (also DHO_BIND, as deploy/ sets it), instead of --host and --port",
)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1), envvar="DHO_WORKERS")
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 64),
    envvar="DHO_THREADS",
    help="threads per worker",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    help="a listening socket per worker (SO_REUSEPORT): the kernel spreads connections over the workers",
)
@server_option
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    bind: str | None,
    workers: int,
    threads: int,
    reuse_port: bool,
    server: str,
) -> None:
    """Run the API (granian or gunicorn). --workers, --threads and --server may also come from DHO_WORKERS,
    DHO_THREADS and DHO_SERVER."""
    from sharing_api.serving import serve as run

    if bind:
        given = [
            f"--{p}" for p in ("host", "port") if ctx.get_parameter_source(p) is ParameterSource.COMMANDLINE
        ]
        if given:  # never silently drop one of two addresses
            raise click.UsageError(f"{' and '.join(given)} and --bind (DHO_BIND) name the address twice")
        host, port = _bind_address(bind)
    run(_settings(), host, port, workers, threads, reuse_port, server)


def _redis_if_reachable(url: str = "redis://127.0.0.1:6379/0") -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url


DEMO_HOSPITAL = ("987654325", "999888771", "Demo sykehus")  # legal entity, point of care (synthetic)
DEMO_HPR = "9144900"


def _client_with_fresh_key(
    directory: Path, registry: ClientRegistry, client_id: str, orgnr: str, scopes: set[str]
) -> Path:
    """A client system with a fresh private key (a JWK file under ``directory``, never in the repo),
    whose ``kid`` is its RFC 7638 thumbprint (third-party JOSE libraries require a ``kid``)."""
    from joserfc.jwk import ECKey

    key_path = directory / f"{client_id}.key.json"
    if key_path.exists():
        key = ECKey.import_key(json.loads(key_path.read_text(encoding="utf-8")))
    else:
        key = ECKey.generate_key("P-256", private=True, auto_kid=True)
    if not key.kid:  # a key file from an older demo
        key = ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})
    if not key_path.exists() or "kid" not in json.loads(key_path.read_text(encoding="utf-8")):
        key_path.unlink(missing_ok=True)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(key.as_dict(private=True)))
    registry.add(
        client_id, orgnr=orgnr, jwks={"keys": [key.as_dict(private=False)]}, scopes=frozenset(scopes)
    )
    return key_path


def _write_profile(path: Path, **fields: object) -> None:
    """A client profile (``sharing_api.consumer.Profile``) for ``dho-share query|token|publish``."""
    path.write_text(json.dumps(fields, indent=2), encoding="utf-8")


def _demo_weight(tenant: str, patient: str) -> dict[str, object]:
    """A body weight measured now, for the demo's printed publish command (idempotent by identifier)."""
    from sharing_api.fhir.identifiers import FNR, ORGNR
    from sharing_api.fhir.vitals import LOINC, OBSERVATION_CATEGORY, UCUM

    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:dho-share:demo", "value": f"weight-{patient}-{now:%Y%m%dT%H%M%S}"}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": {"identifier": {"system": FNR, "value": patient}},
        "effectiveDateTime": now.isoformat(),
        "performer": [{"identifier": {"system": ORGNR, "value": tenant}}],
        "valueQuantity": {"value": 82.5, "unit": "kg", "system": UCUM, "code": "kg"},
    }


def _demo_policy(engine: Engine, controller: str, consumer: str, fnrs: list[str]) -> None:
    """An agreement controller -> consumer; patient 2 reserves against sharing, 3 blocks the doctor."""
    from consent.fhir_consent import directive_to_fhir
    from consent.model import Block, PatientDirective, PatientId, PurposeOfUse, Reservation
    from sharing_api.fhir.identifiers import FNR
    from sharing_api.store.policy import PolicyStore

    store = PolicyStore(engine, lambda: int(datetime.now(UTC).timestamp() * 1e6))
    if not store.agreements(controller=controller, consumer=consumer):
        store.add_agreement(
            controller=controller,
            consumer=consumer,
            categories=frozenset({"vital-signs", "survey", "plan"}),
            write_categories=frozenset({"plan"}),
            purposes=frozenset({PurposeOfUse.TREAT, PurposeOfUse.ETREAT, PurposeOfUse.COC}),
            valid_from=datetime(2024, 1, 1, tzinfo=UTC),
        )
    wishes: list[PatientDirective] = [
        Reservation(id="demo", patient=PatientId(FNR, fnrs[1])),
        Block(id="demo", patient=PatientId(FNR, fnrs[2]), practitioner_hpr=DEMO_HPR),
    ]
    for wish in wishes:
        if not store.patient_directives(controller, (FNR, wish.patient.value)):
            resource = directive_to_fhir(wish)
            resource.pop("id", None)
            store.create_directive(controller, resource)


@main.command()
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--patients", default=20, show_default=True, type=click.IntRange(1))
@click.option("--days", default=30, show_default=True, type=click.IntRange(1))
@click.option("--no-serve", is_flag=True, help="Set up and print the example, but do not serve")
@server_option
def demo(port: int, patients: int, days: int, no_serve: bool, server: str) -> None:
    """Set up a demo municipality and hospital with synthetic patients, and serve them on 127.0.0.1."""
    from sharing_api.store.clients import ClientRegistry
    from sharing_api.store.tenants import TenantDirectory

    overrides: dict[str, object] = {"public_url": f"http://127.0.0.1:{port}"}
    if "DHO_REDIS_URL" not in os.environ:
        overrides["redis_url"] = _redis_if_reachable()
    if "DHO_PERSON_REGISTER" not in os.environ:  # the demo's stand-in register, for rule R9
        overrides["person_register"] = Settings().signing_keys_path.parent / "demo" / "person-register.json"
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.person_register is not None and not settings.person_register.exists():
        from sharing_api.console.persons import write_register

        write_register(settings.person_register, {})  # filled with the seeded patients' names below
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    orgnr, name = DEMO_TENANT
    TenantDirectory(engine).add(orgnr, name)
    demo_dir = settings.signing_keys_path.parent / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    registry = ClientRegistry(engine)
    publisher_key = _client_with_fresh_key(
        demo_dir, registry, "demo-kommune-dho", orgnr, {"dho-share/observation.write"}
    )
    hospital, unit, hospital_name = DEMO_HOSPITAL
    key_path = _client_with_fresh_key(
        demo_dir,
        registry,
        "demo-sykehus-epj",
        hospital,
        {"dho-share/observation.read", "dho-share/careplan.read"},
    )
    profile = demo_dir / "hospital.json"
    _write_profile(
        profile,
        issuer=settings.issuer_url,
        api=settings.base_url,
        client_id="demo-sykehus-epj",
        key=key_path.name,
        organisation=hospital,
        point_of_care=unit,
        hpr=DEMO_HPR,
    )
    publisher = demo_dir / "municipality.json"
    _write_profile(
        publisher,
        issuer=settings.issuer_url,
        api=settings.base_url,
        client_id="demo-kommune-dho",
        key=publisher_key.name,
        organisation=orgnr,
        tenant=orgnr,
        scope="dho-share/observation.write",
    )
    fnrs = _seed(settings, orgnr, max(patients, 3), days, seed=1)
    _demo_policy(engine, orgnr, hospital, fnrs)
    patient_profile = demo_dir / "patient.json"
    _write_profile(
        patient_profile,
        issuer=settings.issuer_url,
        api=settings.base_url,
        tenant=orgnr,
        pid=fnrs[0],
        signing_keys=os.path.relpath(settings.signing_keys_path.resolve(), demo_dir.resolve()),
        organisations={orgnr: name, hospital: hospital_name},
    )
    measurement = demo_dir / "weight.json"
    measurement.write_text(json.dumps(_demo_weight(orgnr, fnrs[0]), indent=2), encoding="utf-8")
    base = f"{settings.base_url}/{orgnr}/fhir"
    console.print(f"\n[bold]dho-share demo[/bold]: {name} ({orgnr}) shares with {hospital_name} ({hospital})")
    console.print(f"API {base}; token service {settings.issuer_url}/.well-known/openid-configuration")
    console.print(
        f"database: {settings.database_url}; Redis: {settings.redis_url or 'none (in-process state)'}"
    )
    console.print("In another terminal, as the hospital's doctor (HPR " + DEMO_HPR + "), try:\n")
    click.echo(
        f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[0]} "
        f"--code {shlex.quote('http://loinc.org|85354-9')} --count 5"
    )
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[0]} --lastn")
    console.print(
        "\nThe patient's treatment plan (CarePlan and Goal) and the latest measurements against it:\n"
    )
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[0]} --careplan")
    console.print(f"\nPatient {fnrs[1]} has reserved against sharing, so the hospital sees no data:\n")
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[1]} --lastn")
    console.print(
        f"\nPatient {fnrs[2]} has blocked this doctor (HPR {DEMO_HPR}), so the doctor sees no data:\n"
    )
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[2]} --lastn")
    console.print(
        f"\nAs the municipality's DHO system (profile {publisher}), publish a weight for patient "
        f"{fnrs[0]} (an Observation or a Bundle; docs/examples/ has more):\n"
    )
    click.echo(f"dho-share publish --profile {publisher} {measurement}")
    console.print(
        f"\nAs patient {fnrs[0]} (signed in through a local stand-in for the national login), see who has "
        "looked at your measurements (run the queries above first):\n"
    )
    click.echo(f"dho-share access-log --profile {patient_profile}")
    auditor, password = console_cli.demo_console(settings, orgnr, days)
    console.print(f"\nAuditor console: {settings.base_url}/console/ (user {auditor}, password {password})")
    if not no_serve:
        from sharing_api.serving import serve as run

        run(settings, "127.0.0.1", port, workers=2 if settings.redis_url else 1, server=server)


@main.group()
def subscriptions() -> None:
    """Topic-based subscriptions: deliver queued notifications (docs/subscriptions.md)."""


@subscriptions.command("deliver")
@click.option("--loop", is_flag=True, help="Keep running, polling the outbox")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.01), help="Poll seconds")
def subscriptions_deliver(loop: bool, interval: float) -> None:
    """Deliver due notifications from the outbox once, or with --loop as a service (for deployments
    that run no delivery thread in the API: DHO_SUBSCRIPTION_DELIVERY_INTERVAL=0)."""
    from sharing_api.app import build_services

    services = build_services(_settings())
    handled = 0
    try:
        while True:
            handled += services.delivery.step(time.time())
            if not loop:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        services.engine.dispose()
    click.echo(f"handled {handled} notifications", err=True)


audit_cli.audit.add_command(consumer.fetch_audit)
main.add_command(audit_cli.audit)
main.add_command(consumer.token)
main.add_command(consumer.query)
main.add_command(consumer.publish)
main.add_command(patient_log.access_log)
main.add_command(console_cli.auditors)
main.add_command(console_cli.seed_audit)
main.add_command(console_cli.audit_rules)
main.add_command(console_cli.console_rollup)


if __name__ == "__main__":
    main()
