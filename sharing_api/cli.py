"""``dho-share``: the operator's command line (product.md §7)."""

from __future__ import annotations

import json
import os
import random
import shlex
from datetime import UTC, datetime
from pathlib import Path

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import Engine

from sharing_api import consumer
from sharing_api.audit import cli as audit_cli
from sharing_api.settings import Settings
from sharing_api.store.clients import ClientRegistry
from sharing_api.store.engine import analyze, make_engine, upgrade

console = Console(stderr=True)
DEMO_TENANT = ("921234562", "Demo kommune (DHO)")  # a synthetic org.nr with a valid control digit


def _settings() -> Settings:
    return Settings()


@click.group()
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
def tenants_add(orgnr: str, name: str, resh: tuple[str, ...]) -> None:
    """Serve ORGNR's data under /ORGNR/fhir."""
    from sharing_api.store.tenants import TenantDirectory

    try:
        new = TenantDirectory(make_engine(_settings().database_url)).add(
            orgnr, name, resh_ids=frozenset(resh)
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="ORGNR") from exc
    console.print(f"{'added' if new else 'updated'} tenant {orgnr} ({name})")


@tenants.command("list")
def tenants_list() -> None:
    """List the tenants."""
    from sharing_api.store.tenants import TenantDirectory

    table = Table("orgnr", "name", "RESH ids")
    for t in TenantDirectory(make_engine(_settings().database_url)).all():
        table.add_row(t.orgnr, t.name, ", ".join(sorted(t.resh_ids)))
    Console().print(table)


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
    "--jwks", "jwks_path", required=True, type=click.Path(exists=True, dir_okay=False), help="Public JWKS"
)
@click.option("--scope", "scopes", multiple=True, required=True, help="An allowed scope (repeatable)")
@click.option("--name", default="", help="A readable name")
def clients_add(
    client_id: str, orgnr: str, point_of_care: str | None, jwks_path: str, scopes: tuple[str, ...], name: str
) -> None:
    """Register CLIENT_ID with its public keys (a JWKS file) and allowed scopes."""
    import json

    from auth.tokens import SCOPES
    from sharing_api.store.clients import ClientRegistry

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


@clients.command("list")
def clients_list() -> None:
    """List registered clients."""
    from sharing_api.store.clients import ClientRegistry

    table = Table("client_id", "org.nr", "point of care", "scopes", "enabled", "keys")
    for c in ClientRegistry(make_engine(_settings().database_url)).all():
        kids = ", ".join(str(k.get("kid", "?")) for k in c.jwks["keys"])
        table.add_row(
            c.client_id, c.orgnr, c.point_of_care or "", " ".join(sorted(c.scopes)), str(c.enabled), kids
        )
    Console().print(table)


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

    try:
        agreement = PolicyStore(
            make_engine(_settings().database_url), lambda: int(datetime.now(UTC).timestamp() * 1e6)
        ).add_agreement(
            controller=controller,
            consumer=consumer,
            categories=frozenset(categories),
            purposes=frozenset(PurposeOfUse(p) for p in purposes),
            valid_from=aware(valid_from) or datetime.now(UTC),
            valid_to=aware(valid_to),
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    console.print(
        f"agreement {agreement.id}: {consumer} may read {controller}'s {', '.join(sorted(categories))}"
    )


@agreements.command("list")
@click.option("--controller", help="Only this controller's agreements")
def agreements_list(controller: str | None) -> None:
    """List agreements."""
    from sharing_api.store.policy import PolicyStore

    table = Table("id", "controller", "consumer", "categories", "purposes", "from", "to")
    for a in PolicyStore(make_engine(_settings().database_url), lambda: 0).agreements(controller=controller):
        table.add_row(
            a.id,
            a.controller,
            a.consumer,
            " ".join(sorted(a.categories)),
            " ".join(sorted(a.purposes)),
            a.period.start.isoformat() if a.period.start else "",
            a.period.end.isoformat() if a.period.end else "",
        )
    Console().print(table)


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
    stored = 0
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("seeding patients", total=patients)
        for person in people:
            for bundle in batches(series(person, tenant_orgnr, days, rng, end), 500):
                result = svc.publisher.bundle(record, bundle, base="")
                stored += sum(
                    1 for e in result["entry"] if e["response"]["status"].startswith(("200", "201"))
                )
            progress.advance(task)
    analyze(svc.engine)  # a bulk load: fresh planner statistics before anyone searches (issue 13)
    svc.engine.dispose()
    console.print(f"{stored} observations for {patients} patients over {days} days in tenant {tenant_orgnr}")
    return [p.fnr for p in people]


@main.command()
@click.option("--tenant", "tenant_orgnr", required=True, help="The tenant's org.nr")
@click.option("--patients", default=10, show_default=True, type=click.IntRange(1))
@click.option("--days", default=30, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True, help="Random seed (same seed, same data)")
def seed(tenant_orgnr: str, patients: int, days: int, seed: int) -> None:
    """Publish realistic synthetic measurements (synthetic FNRs only)."""
    _seed(_settings(), tenant_orgnr, patients, days, seed)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1))
def serve(host: str, port: int, workers: int) -> None:
    """Run the API (gunicorn)."""
    from sharing_api.serving import serve as run

    run(_settings(), host, port, workers)


def _redis_if_reachable(url: str = "redis://127.0.0.1:6379/0") -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
    except redis.RedisError:
        return None
    return url


DEMO_HOSPITAL = ("987654325", "999888771", "Demo sykehus")  # legal entity, point of care (synthetic)
DEMO_HPR = "9144900"


def _demo_client(
    directory: Path, registry: ClientRegistry, client_id: str, orgnr: str, scopes: set[str]
) -> Path:
    """A client system with a fresh private key (a JWK file under ``directory``, never in the repo)."""
    from joserfc.jwk import ECKey

    key_path = directory / f"{client_id}.key.json"
    if key_path.exists():
        key = ECKey.import_key(json.loads(key_path.read_text(encoding="utf-8")))
    else:
        key = ECKey.generate_key("P-256", private=True)
        key_path.write_text(json.dumps(key.as_dict(private=True)), encoding="utf-8")
        key_path.chmod(0o600)
    registry.add(
        client_id, orgnr=orgnr, jwks={"keys": [key.as_dict(private=False)]}, scopes=frozenset(scopes)
    )
    return key_path


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
            categories=frozenset({"vital-signs", "survey"}),
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
def demo(port: int, patients: int, days: int, no_serve: bool) -> None:
    """Set up a demo municipality and hospital with synthetic patients, and serve them on 127.0.0.1."""
    from sharing_api.store.clients import ClientRegistry
    from sharing_api.store.tenants import TenantDirectory

    overrides: dict[str, object] = {"public_url": f"http://127.0.0.1:{port}"}
    if "DHO_REDIS_URL" not in os.environ:
        overrides["redis_url"] = _redis_if_reachable()
    settings = Settings(**overrides)  # type: ignore[arg-type]
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    orgnr, name = DEMO_TENANT
    TenantDirectory(engine).add(orgnr, name)
    demo_dir = settings.signing_keys_path.parent / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    registry = ClientRegistry(engine)
    _demo_client(demo_dir, registry, "demo-kommune-dho", orgnr, {"dho-share/observation.write"})
    hospital, unit, hospital_name = DEMO_HOSPITAL
    key_path = _demo_client(demo_dir, registry, "demo-sykehus-epj", hospital, {"dho-share/observation.read"})
    profile = demo_dir / "hospital.json"
    profile.write_text(
        json.dumps(
            {
                "issuer": settings.issuer_url,
                "api": settings.base_url,
                "client_id": "demo-sykehus-epj",
                "key": key_path.name,
                "organisation": hospital,
                "point_of_care": unit,
                "hpr": DEMO_HPR,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    fnrs = _seed(settings, orgnr, max(patients, 3), days, seed=1)
    _demo_policy(engine, orgnr, hospital, fnrs)
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
    console.print(f"\nPatient {fnrs[1]} has reserved against sharing, so the hospital sees no data:\n")
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[1]} --lastn")
    console.print(
        f"\nPatient {fnrs[2]} has blocked this doctor (HPR {DEMO_HPR}), so the doctor sees no data:\n"
    )
    click.echo(f"dho-share query --profile {profile} --tenant {orgnr} --patient {fnrs[2]} --lastn")
    if not no_serve:
        from sharing_api.serving import serve as run

        run(settings, "127.0.0.1", port, workers=2 if settings.redis_url else 1)


audit_cli.audit.add_command(consumer.fetch_audit)
main.add_command(audit_cli.audit)
main.add_command(consumer.token)
main.add_command(consumer.query)


if __name__ == "__main__":
    main()
