"""The gateway's config file (TOML): where it listens, the models and the engine hosts serving them."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import msgspec

from gateway import durations
from gateway.alerts.config import AlertsSection
from security import Policy


class ServerSection(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    certfile: str | None = None
    keyfile: str | None = None
    # Serve the hot path (non-streaming completions, no prompt security, no TLS) from the native lane
    # (gateway/native_lane.py) where it is built; everything else is served by the Python server.
    native_lane: bool = True
    # Browser origins that may call the API (CORS, gateway/http/cors.py): "*" every one, [] none.
    cors_allowed_origins: list[str] = msgspec.field(default_factory=lambda: ["*"])


class RoutingSection(msgspec.Struct, forbid_unknown_fields=True):
    # Distinct hosts tried for one request before it fails with 503.
    max_attempts: int = 3
    health_interval_s: float = 2.0
    health_timeout_s: float = 5.0
    # Consecutive request failures that take a host out until a health probe succeeds.
    failure_threshold: int = 2
    connect_timeout_s: float = 5.0
    # From sending a request to the engine's first byte, and to a stream's first event (queueing and
    # prefill included); then the longest silence allowed in a body or a stream.
    first_byte_timeout_s: float = 600.0
    # A prompt prefix at least this long (characters) pins requests to one host...
    affinity_min_chars: int = 512
    # ...unless that host's load exceeds the least loaded host's by this factor plus this many tokens.
    affinity_slack_ratio: float = 1.5
    affinity_slack_tokens: int = 4096
    # Output tokens assumed for a request that sets no max_tokens.
    default_max_tokens: int = 512


class HostEntry(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    # "llmaas": an `llmaas engine` (load reports at /internal/load); "openai": any OpenAI-compatible server.
    kind: str = "llmaas"
    # The environment variable that holds the engine's API key (`llmaas engine --api-key`, vLLM's
    # --api-key), sent as a bearer token with every request to it; the key itself stays out of files.
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"host {self.url!r}: api_key_env names {self.api_key_env}, which is not set")
        return key


class ModelEntry(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    hosts: list[str | HostEntry]


class TenancySection(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    # False only for local experiments (`llmaas serve --no-auth`): every caller is the local tenant.
    require_auth: bool = True
    # An SQLite file or a postgresql:// URL (a fleet's shared database); default $LLMAAS_DB or
    # ~/.local/share/llmaas/llmaas.db.
    db: str | None = None
    tiers: str | None = None  # tiers and prices TOML; default $LLMAAS_TIERS or the shipped tiers
    catalog: str | None = None  # model catalog TOML; default the shipped catalog
    # How long each admitted request's prompt text is kept in its audit record ("90d"), encrypted
    # with the key in LLMAAS_AUDIT_KEY; unset: no prompt text is kept.
    prompt_retention: str | None = None

    @property
    def prompt_retention_s(self) -> float | None:
        return durations.seconds(self.prompt_retention) if self.prompt_retention is not None else None


class SecuritySection(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool = True
    policy: Policy = msgspec.field(default_factory=Policy)  # each layer: on, flag_only or off
    tenants: dict[str, Policy] = msgspec.field(default_factory=dict)  # per-tenant overrides


class GatewayConfig(msgspec.Struct, forbid_unknown_fields=True):
    models: list[ModelEntry]
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    routing: RoutingSection = msgspec.field(default_factory=RoutingSection)
    tenancy: TenancySection = msgspec.field(default_factory=TenancySection)
    security: SecuritySection = msgspec.field(default_factory=SecuritySection)
    alerts: AlertsSection = msgspec.field(default_factory=AlertsSection)


class ConfigError(ValueError):
    pass


def parse_config(text: str) -> GatewayConfig:
    try:
        config = msgspec.toml.decode(text, type=GatewayConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"invalid gateway config: {exc}") from None
    _check(config)
    return config


def load_config(path: str) -> GatewayConfig:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_config(f.read())
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {path}: {exc.strerror}") from None


def host_entries(model: ModelEntry) -> list[HostEntry]:
    return [HostEntry(url=h) if isinstance(h, str) else h for h in model.hosts]


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an `http://host:port` engine address."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"engine host {url!r}: expected http://HOST:PORT")
    return parts.hostname, parts.port or 80


def _check(config: GatewayConfig) -> None:
    if not config.models:
        raise ConfigError("invalid gateway config: no [[models]]")
    try:
        retention = config.tenancy.prompt_retention_s
    except ValueError as exc:
        raise ConfigError(f"invalid gateway config: [tenancy] prompt_retention: {exc}") from None
    if retention is not None and retention <= 0:
        raise ConfigError("invalid gateway config: [tenancy] prompt_retention must be longer than zero")
    names = [m.name for m in config.models]
    if len(set(names)) != len(names):
        raise ConfigError("invalid gateway config: a model is listed twice")
    for model in config.models:
        if not model.hosts:
            raise ConfigError(f"invalid gateway config: model {model.name!r} has no hosts")
        for host in host_entries(model):
            split_url(host.url)
            if host.kind not in ("llmaas", "openai"):
                raise ConfigError(f"host {host.url!r}: kind must be llmaas or openai")
            host.api_key()
    if config.routing.max_attempts < 1 or config.routing.failure_threshold < 1:
        raise ConfigError("invalid gateway config: max_attempts and failure_threshold must be >= 1")
