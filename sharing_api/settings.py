"""Settings, read once from the environment (``DHO_*``), typed and frozen.

A bad value stops start-up with a message naming the variable. Secrets are ``SecretStr`` so that a
``repr`` or a log line never shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sharing_api.fhir.search import SearchLimits
from sharing_api.forwarded import IPNetwork, parse_networks

DEFAULT_DATA_DIR = Path("var")


class TrustedIssuerSetting(BaseModel):
    """An external token issuer the API trusts (e.g. HelseID): ``DHO_TRUSTED_ISSUERS`` is a JSON list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str
    audience: str
    algorithms: tuple[str, ...] | None = None
    jwks_uri: str | None = None


class Settings(BaseSettings):
    """Configuration of one dho-share process (API and token service)."""

    model_config = SettingsConfigDict(env_prefix="DHO_", frozen=True, extra="ignore")

    database_url: str = Field(
        default=f"sqlite:///{(DEFAULT_DATA_DIR / 'dho-share.sqlite3').as_posix()}",
        description="SQLAlchemy URL; a SQLite file by default, postgresql://... in production",
    )
    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis for search sessions and replay caches; in-process when unset. redis://, "
            "redis+sentinel://h:p,h:p/<service>[/<db>] or redis+cluster://h:p,h:p"
        ),
    )
    redis_replica_acks: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Replicas that must acknowledge (WAIT) a replay claim or revocation before it counts",
    )
    redis_wait_ms: int = Field(default=200, ge=1, le=5000, description="How long WAIT may block, ms")
    public_url: AnyHttpUrl = Field(
        default=AnyHttpUrl("http://127.0.0.1:8080"),
        description="External base URL: links are built from it and DPoP htu is checked against it",
    )
    issuer: str | None = Field(
        default=None, description="Our token service's issuer (default: the public URL)"
    )
    audience: str = Field(default="dho-share", description="The API's audience / scope prefix")
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    max_bundle_entries: int = Field(default=1000, ge=1)
    max_json_depth: int = Field(default=32, ge=4)
    clock_skew: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Seconds an effective time may lie in the future (device clocks)",
    )
    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=500, ge=1)
    search_session_ttl: int = Field(default=900, ge=10, description="Seconds a paging cursor stays valid")
    search_max_parameters: int = Field(default=50, ge=5, le=1000, description="Parameters per search")
    search_max_values: int = Field(
        default=100, ge=1, le=1000, description="Comma-separated values per parameter"
    )
    search_max_value_bytes: int = Field(default=256, ge=32, le=4096, description="Bytes per search value")
    signing_keys_path: Path = Field(
        default=DEFAULT_DATA_DIR / "signing-keys.json",
        description="The token service's private signing keys (made on first start; never in the repo)",
    )
    token_lifetime: int = Field(default=300, ge=30, le=3600, description="Access-token lifetime in seconds")
    dpop_nonce: bool = Field(
        default=False, description="Require server-provided DPoP nonces (RFC 9449 §8, §9)"
    )
    audit_key_path: Path = Field(
        default=DEFAULT_DATA_DIR / "audit-signing-key.pem",
        description="Ed25519 key that signs audit checkpoints (made on first start; never in the repo)",
    )
    audit_self_access_key_path: Path = Field(
        default=DEFAULT_DATA_DIR / "audit-self-access.key",
        description="Secret of the keyed hash of health workers' identity numbers in the audit log (rule"
        " R8; made on first start, never rotated with the signing keys; never in the repo)",
    )
    person_register: Path | None = Field(
        default=None,
        description="JSON file of patient identifier -> family name for console rule R9 (mode 0600; read"
        " once at start). Unset: R9 is reported as needing data",
    )
    audit_origin: str | None = Field(
        default=None,
        description="Prefix of new audit logs' names (<origin>/<tenant>, C2SP, no scheme);"
        " default dho-share.<public host>/audit. A log keeps the name it was created with",
    )
    audit_sequencer_interval: float = Field(
        default=1.0, ge=0, description="Seconds between sequencer runs in each worker (0: run it separately)"
    )
    subscription_http_loopback: bool = Field(
        default=False,
        description="Allow plain http rest-hook endpoints on loopback addresses (tests, development only)",
    )
    subscription_allowed_networks: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default=(),
        description="Non-public networks (comma-separated CIDRs) rest-hook endpoints may resolve to; any"
        " other private, loopback or link-local destination is refused (no SSRF)",
    )
    subscription_delivery_interval: float = Field(
        default=1.0,
        ge=0,
        description="Seconds between notification delivery passes in each worker (0: none in the API)",
    )
    subscription_max_attempts: int = Field(
        default=8, ge=1, le=50, description="Delivery attempts per notification before the Subscription errs"
    )
    subscription_retry_seconds: float = Field(
        default=5.0, gt=0, description="Backoff base: the wait after the first failed attempt (with jitter)"
    )
    subscription_retry_max_seconds: float = Field(
        default=900.0, gt=0, description="Longest wait between two attempts"
    )
    subscription_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds a subscriber's endpoint has to answer"
    )
    trusted_issuers: tuple[TrustedIssuerSetting, ...] = Field(
        default=(),
        description='Trusted external issuers (JSON): [{"issuer": "https://...", "audience": "..."}]',
    )
    trusted_proxies: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        default=(),
        description="Proxies (comma-separated CIDRs) whose X-Forwarded-For names the client's address"
        " in the audit log; from any other peer the header is ignored",
    )
    rate_limit: int = Field(default=6000, ge=1, description="Requests per client per minute before 429")
    console_session_timeout: int = Field(
        default=900, ge=30, le=43200, description="Idle seconds before an auditor console session ends"
    )
    console_login_failures: int = Field(
        default=5, ge=1, le=1000, description="Failed console logins per account per window before a lock"
    )
    console_login_address_failures: int = Field(
        default=20, ge=1, le=10000, description="Failed console logins per source address per window"
    )
    console_login_window: int = Field(
        default=900, ge=1, le=86400, description="Seconds of the console's failed-login window (and lock)"
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        min_length=16,
        description="Bearer token a Prometheus scrape of /metrics presents (unset: /metrics answers 404)",
    )

    @field_validator("metrics_token", "person_register", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """``DHO_METRICS_TOKEN=`` (empty, as compose passes an unset variable) means no metrics;
        ``DHO_PERSON_REGISTER=`` no person register."""
        return None if value == "" else value

    @field_validator("trusted_proxies", "subscription_allowed_networks", mode="before")
    @classmethod
    def _networks(cls, value: object) -> object:
        """``DHO_TRUSTED_PROXIES=10.0.0.0/8,127.0.0.1/32``: a comma-separated list (empty: none)."""
        if isinstance(value, str) or (
            isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        ):
            return parse_networks(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError("DHO_DATABASE_URL must be a sqlite:/// or postgresql:// URL")
        return value

    @property
    def base_url(self) -> str:
        """The public URL without a trailing slash."""
        return str(self.public_url).rstrip("/")

    def search_limits(self) -> SearchLimits:
        """The caps every search is checked against before anything is parsed, read or audited."""
        return SearchLimits(self.search_max_parameters, self.search_max_values, self.search_max_value_bytes)

    @property
    def audit_log_origin(self) -> str:
        """The prefix of new audit logs' names: ``DHO_AUDIT_ORIGIN``, else ``dho-share.<host>/audit``
        (C2SP tlog-checkpoint origins carry no scheme). Only logs created later get it: a log's name is
        stored with it when it is created and never changes (``AuditLog.log_name``)."""
        if self.audit_origin:
            return self.audit_origin.rstrip("/")
        host = self.public_url.host or "localhost"
        port = f":{self.public_url.port}" if self.public_url.port not in (None, 80, 443) else ""
        return f"dho-share.{host}{port}/audit"

    @property
    def issuer_url(self) -> str:
        """Our token service's issuer identifier (``DHO_ISSUER``, by default the public URL)."""
        return (self.issuer or self.base_url).rstrip("/")
