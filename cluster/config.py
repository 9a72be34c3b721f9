"""Settings: config/default.toml, then an optional --config file, then LENDCORE_* env vars.

The layering is API.md's configuration contract. Every key is typed (msgspec) so a typo in
a config file is an error at start-up, not a silent default.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from lending.collections import CollectionsPolicy
from lending.daily import ServicingPolicy
from lending.events import endpoint_url_problem
from lending.screening import SOURCES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "default.toml"


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True):
    pg_dsn: str = ""
    pool_size_per_host: int = 10
    pool_size_gateway: int = 4


class RedisSettings(msgspec.Struct, forbid_unknown_fields=True):
    url: str = ""
    key_prefix: str = "lendcore:"


class PathSettings(msgspec.Struct, forbid_unknown_fields=True):
    data_dir: str = ".lendcore"
    products_dir: str = "config/products"
    chart_file: str = "config/chart_of_accounts.toml"
    partners_file: str = "config/partners.toml"
    risk_dir: str = "config/risk"


class ClusterSettings(msgspec.Struct, forbid_unknown_fields=True):
    ray_address: str = ""
    ray_num_cpus: int = 2
    ray_object_store_mb: int = 96
    local_nodes: int = 1  # nodes of a local Ray cluster (cluster/bootstrap.py); 1: ray.init
    logical_shards: int = 16
    shard_hosts: int = 2
    # With several Ray nodes: shard hosts started on each node (pinned to it); shard_hosts
    # is then unused. A node that joins later gets as many (cluster/coordinator.py).
    hosts_per_node: int = 1
    initial_business_date: str = ""


class ShardSettings(msgspec.Struct, forbid_unknown_fields=True):
    inbox_max: int = 20000
    batch_max: int = 1000
    commits_in_flight_max: int = 2
    lease_claim_ttl_ms: int = 5000


# How the gateway sends partner commands to the shard hosts: over each host's data port
# (actors/data_port.py), or as Ray calls (what it did before; 1 ms of CPU more per call).
HOST_TRANSPORTS = ("socket", "ray")


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True):
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ops_host: str = "127.0.0.1"
    ops_port: int = 8081
    body_max_bytes: int = 1048576
    ray_call_items_max: int = 2000
    calls_in_flight_max: int = 4
    call_fill_ms: float = 20.0
    host_transport: str = "socket"  # partner commands: "socket" (actors/data_port.py) or "ray"
    pending_max: int = 50000
    retry_deadline_s: float = 8.0
    request_timeout_s: float = 10.0
    clock_skew_max_s: int = 300
    nonce_ttl_s: int = 600
    idempotency_ttl_s: int = 90000
    rate_per_partner_s: float = 20000.0
    rate_burst: int = 40000
    processes: int = 1  # partner-API processes on api_port (cluster/gateway_process.py)


class RiskSettings(msgspec.Struct, forbid_unknown_fields=True):
    apr_cap_bps: int = 2400
    offer_valid_days: int = 7


CONNECTOR_MODES = ("simulator",)  # real connectors are not configured in this repo


class ConnectorSourceSettings(msgspec.Struct, forbid_unknown_fields=True):
    """[connectors.sources.<name>]: per-source overrides; an absent key inherits [connectors]."""

    enabled: bool = True
    timeout_ms: int | None = None
    retries: int | None = None
    retry_backoff_ms: int | None = None
    breaker_failures: int | None = None
    breaker_reset_s: float | None = None
    simulator_latency_ms: int | None = None
    simulator_jitter_ms: int | None = None
    simulator_failure_rate: float | None = None


class ConnectorSettings(msgspec.Struct, forbid_unknown_fields=True):
    """[connectors]: external data sources (DOMAIN.md §6), see gateway/connectors.py."""

    mode: str = "simulator"
    timeout_ms: int = 1000
    retries: int = 1
    retry_backoff_ms: int = 50
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0
    deadline_ms: int = 3000
    simulator_latency_ms: int = 0
    simulator_jitter_ms: int = 0
    simulator_failure_rate: float = 0.0
    simulator_seed: int = 0
    sources: dict[str, ConnectorSourceSettings] = msgspec.field(default_factory=dict)

    def for_source(self, name: str) -> dict[str, Any]:
        """The effective per-source keys of `name`: its overrides over the [connectors] ones."""
        override = self.sources.get(name, ConnectorSourceSettings())
        values: dict[str, Any] = {"enabled": override.enabled}
        for key in _CONNECTOR_SOURCE_KEYS:
            value = getattr(override, key)
            values[key] = getattr(self, key) if value is None else value
        return values


_CONNECTOR_SOURCE_KEYS = tuple(
    key for key in ConnectorSourceSettings.__struct_fields__ if key != "enabled"
)


class AntiFraudSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Sliding windows of the anti-fraud counters (gateway/antifraud.py); thresholds are the
    rules' business, these only say what is counted."""

    id_window_s: int = 86400
    phone_window_s: int = 86400
    device_window_s: int = 86400
    ip_window_s: int = 86400
    device_identities_window_s: int = 604800
    id_partners_window_s: int = 2592000
    max_events_per_key: int = 1000


class ReviewSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Manual review queue (gateway/reviews.py)."""

    claim_ttl_s: int = 900  # an officer's claim on an application lasts this long
    maker_checker_amount_over: int = 3000000  # above: a second officer must confirm
    page_max: int = 100  # most reviews or audit rows one GET returns


class EodSettings(msgspec.Struct, forbid_unknown_fields=True):
    """End of day (cluster/eod.py) and its daily schedule (cluster/eod_schedule.py)."""

    chunk_loans: int = 2000  # loans one EodStep closes in one shard commit
    shard_concurrency: int = 4  # shards of one host running their EOD chunks at once
    lock_ttl_s: float = 30.0  # the Redis run lock expires this long after its last renewal
    schedule_enabled: bool = False  # run end of day by itself every day at schedule_at
    schedule_at: str = "23:30"  # the daily cut-off, wall-clock HH:MM in schedule_timezone
    schedule_timezone: str = "Asia/Shanghai"  # IANA zone of schedule_at and of "today"
    catch_up_max_days: int = 7  # most business dates one firing closes

    def schedule_time(self) -> time:
        """`schedule_at` as a time of day; ValueError naming the key when it is not HH:MM."""
        if not _HH_MM.fullmatch(self.schedule_at):
            raise ValueError(
                f"eod.schedule_at must be a wall-clock time HH:MM (00:00..23:59), "
                f"not {self.schedule_at!r}"
            )
        return time.fromisoformat(self.schedule_at)

    def schedule_zone(self) -> ZoneInfo:
        """`schedule_timezone` as a zone; ValueError naming the key when it is unknown."""
        try:
            return ZoneInfo(self.schedule_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            # ZoneInfoNotFoundError: no such zone; ValueError: not a zone key at all ("", "../x")
            raise ValueError(
                f"eod.schedule_timezone must be an IANA time zone such as 'Asia/Shanghai', "
                f"not {self.schedule_timezone!r}"
            ) from exc


_HH_MM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class OutboxSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Sending end of day's SMS reminders and withholding requests (cluster/outbox.py)."""

    page_rows: int = 500  # pending requests read per round trip
    concurrency: int = 32  # requests in flight at once
    timeout_s: float = 2.0  # one connector call
    max_attempts: int = 3  # a request still failing after this many sends is failed
    # Simulators (the development connectors): deterministic from the request id.
    sms_failure_per_mille: int = 20  # undeliverable messages
    payment_decline_per_mille: int = 100  # withholdings declined (insufficient balance)


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Delivering partner webhook events (cluster/webhooks.py; docs/operations.md)."""

    enabled: bool = True  # the delivery worker runs in the gateway process
    poll_interval_s: float = 0.5  # an idle worker looks for due events this often
    batch_max: int = 100  # events claimed per round trip
    concurrency: int = 16  # POSTs in flight at once
    timeout_s: float = 5.0  # one POST, connect to response headers
    max_attempts: int = 16  # an event still failing after this many POSTs is failed
    backoff_initial_s: float = 1.0  # wait after the first failed attempt; doubles each time
    backoff_max_s: float = 1800.0  # ... up to this
    claim_s: float = 60.0  # a claimed event is not claimed again for this long (> timeout_s)


class SecuritySettings(msgspec.Struct, forbid_unknown_fields=True):
    pii_key_hex: str = ""
    hash_key_hex: str = ""


class OperatorSettings(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    token: str
    roles: list[str]


class Settings(msgspec.Struct, forbid_unknown_fields=True):
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    paths: PathSettings = msgspec.field(default_factory=PathSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)
    shard: ShardSettings = msgspec.field(default_factory=ShardSettings)
    gateway: GatewaySettings = msgspec.field(default_factory=GatewaySettings)
    risk: RiskSettings = msgspec.field(default_factory=RiskSettings)
    antifraud: AntiFraudSettings = msgspec.field(default_factory=AntiFraudSettings)
    servicing: ServicingPolicy = msgspec.field(default_factory=ServicingPolicy)
    connectors: ConnectorSettings = msgspec.field(default_factory=ConnectorSettings)
    review: ReviewSettings = msgspec.field(default_factory=ReviewSettings)
    eod: EodSettings = msgspec.field(default_factory=EodSettings)
    collections: CollectionsPolicy = msgspec.field(default_factory=CollectionsPolicy)
    outbox: OutboxSettings = msgspec.field(default_factory=OutboxSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)
    operators: list[OperatorSettings] = msgspec.field(default_factory=list)

    def resolve_path(self, value: str) -> Path:
        """Relative paths in config are relative to the project root, not the cwd."""
        path = Path(value)
        return path if path.is_absolute() else PROJECT_ROOT / path


class ConfigError(ValueError):
    pass


# env var → (section, key, type). These always win over files (API.md).
ENV_OVERRIDES: dict[str, tuple[str, str, type]] = {
    "LENDCORE_PG_DSN": ("storage", "pg_dsn", str),
    "LENDCORE_REDIS_URL": ("redis", "url", str),
    "LENDCORE_REDIS_PREFIX": ("redis", "key_prefix", str),
    "LENDCORE_DATA_DIR": ("paths", "data_dir", str),
    "LENDCORE_API_PORT": ("gateway", "api_port", int),
    "LENDCORE_OPS_PORT": ("gateway", "ops_port", int),
    "LENDCORE_BUSINESS_DATE": ("cluster", "initial_business_date", str),
    "LENDCORE_RAY_ADDRESS": ("cluster", "ray_address", str),
    "LENDCORE_LOCAL_NODES": ("cluster", "local_nodes", int),
    "LENDCORE_GATEWAY_PROCESSES": ("gateway", "processes", int),
    "LENDCORE_HOST_TRANSPORT": ("gateway", "host_transport", str),
    "LENDCORE_PII_KEY": ("security", "pii_key_hex", str),
    "LENDCORE_HASH_KEY": ("security", "hash_key_hex", str),
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for var, (section, key, kind) in ENV_OVERRIDES.items():
        if var not in environ:
            continue
        text = environ[var]
        try:
            value = kind(text)
        except ValueError as exc:
            raise ConfigError(f"{var}={text!r} is not a valid {kind.__name__}") from exc
        raw = _merge(raw, {section: {key: value}})
    return raw


def load_settings(
    config_file: Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    raw = _read_toml(DEFAULT_CONFIG)
    if config_file is not None:
        raw = _merge(raw, _read_toml(config_file))
    raw = _apply_env(raw, dict(os.environ) if environ is None else environ)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    cluster = settings.cluster
    if not 1 <= cluster.logical_shards <= 4096:
        raise ConfigError("cluster.logical_shards must be in 1..4096")
    if not 1 <= cluster.shard_hosts <= cluster.logical_shards:
        raise ConfigError("cluster.shard_hosts must be in 1..logical_shards")
    if not 1 <= cluster.hosts_per_node <= 64:
        raise ConfigError("cluster.hosts_per_node must be in 1..64")
    if not 1 <= cluster.local_nodes <= 16:
        raise ConfigError("cluster.local_nodes must be in 1..16")
    if cluster.local_nodes > 1 and cluster.ray_address:
        raise ConfigError("cluster.local_nodes > 1 starts a local cluster; it cannot be combined "
                          "with cluster.ray_address (LENDCORE_RAY_ADDRESS), which joins one")
    if not 1 <= settings.gateway.processes <= 64:
        raise ConfigError("gateway.processes must be in 1..64")
    if not 1 <= settings.shard.commits_in_flight_max <= 16:
        raise ConfigError("shard.commits_in_flight_max must be in 1..16")
    shards_per_host = -(-cluster.logical_shards // cluster.shard_hosts)
    if settings.storage.pool_size_per_host < shards_per_host + 1:
        # end of day commits every shard's chunk at once, each on a connection of its own
        raise ConfigError(
            f"storage.pool_size_per_host must be at least {shards_per_host + 1} "
            f"(shards per host + 1)"
        )
    if not 1 <= settings.shard.batch_max <= 10000:
        raise ConfigError("shard.batch_max must be in 1..10000")
    _validate_timeouts(settings)
    for name, value in msgspec.structs.asdict(settings.antifraud).items():
        if not 1 <= value <= 10**9:
            raise ConfigError(f"antifraud.{name} must be in 1..1000000000")
    try:
        settings.servicing.validate()
        settings.collections.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    _validate_outbox(settings.outbox)
    _validate_webhooks(settings.webhooks)
    _validate_connectors(settings.connectors)
    review = settings.review
    if not 1 <= review.claim_ttl_s <= 7 * 86400:
        raise ConfigError("review.claim_ttl_s must be in 1..604800")
    if review.maker_checker_amount_over < 0:
        raise ConfigError("review.maker_checker_amount_over must be >= 0")
    if not 1 <= review.page_max <= 1000:
        raise ConfigError("review.page_max must be in 1..1000")
    eod = settings.eod
    if not 1 <= eod.chunk_loans <= 100000:
        raise ConfigError("eod.chunk_loans must be in 1..100000")
    if not 1 <= eod.shard_concurrency <= 1000:
        raise ConfigError("eod.shard_concurrency must be in 1..1000")
    if not 1 <= eod.lock_ttl_s <= 3600:
        raise ConfigError("eod.lock_ttl_s must be in 1..3600")
    if not 1 <= eod.catch_up_max_days <= 366:
        raise ConfigError("eod.catch_up_max_days must be in 1..366")
    try:
        # Checked even while the schedule is off: a typo must not wait for the day it is on.
        eod.schedule_time()
        eod.schedule_zone()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for name in ("pii_key_hex", "hash_key_hex"):
        value = getattr(settings.security, name)
        if len(bytes.fromhex(value)) != 32:
            raise ConfigError(f"security.{name} must be 32 bytes of hex")


# key → (lowest, highest) allowed, for [connectors] and each [connectors.sources.<name>]
_CONNECTOR_RANGES: dict[str, tuple[float, float]] = {
    "timeout_ms": (1, 60000),
    "retries": (0, 5),
    "retry_backoff_ms": (0, 10000),
    "breaker_failures": (1, 1000),
    "breaker_reset_s": (0.001, 3600),
    "simulator_latency_ms": (0, 60000),
    "simulator_jitter_ms": (0, 60000),
    "simulator_failure_rate": (0, 1),
}


def _validate_timeouts(settings: Settings) -> None:
    """A request must outlive what it waits on, or it would always time out first."""
    gateway = settings.gateway
    if not 1 <= gateway.request_timeout_s <= 300:
        raise ConfigError("gateway.request_timeout_s must be in 1..300")
    if not 0 < gateway.retry_deadline_s < gateway.request_timeout_s:
        raise ConfigError("gateway.retry_deadline_s must be in (0, request_timeout_s)")
    if not 0 <= gateway.call_fill_ms <= 100:
        raise ConfigError("gateway.call_fill_ms must be in 0..100 (milliseconds a call "
                          "may wait for the host's call in flight; every request waits it)")
    if gateway.host_transport not in HOST_TRANSPORTS:
        raise ConfigError(f"gateway.host_transport must be one of {list(HOST_TRANSPORTS)}")
    if settings.connectors.deadline_ms >= gateway.request_timeout_s * 1000:
        raise ConfigError(
            "connectors.deadline_ms must be below gateway.request_timeout_s: an application "
            "is screened inside its request"
        )


def _validate_connectors(connectors: ConnectorSettings) -> None:
    if connectors.mode not in CONNECTOR_MODES:
        raise ConfigError(
            f"connectors.mode must be one of {list(CONNECTOR_MODES)} (real connectors are not "
            f"configured in this build), not {connectors.mode!r}"
        )
    if not 1 <= connectors.deadline_ms <= 120000:
        raise ConfigError("connectors.deadline_ms must be in 1..120000")
    unknown = sorted(set(connectors.sources) - set(SOURCES))
    if unknown:
        raise ConfigError(
            f"connectors.sources: unknown source(s) {unknown}; known: {list(SOURCES)}"
        )
    tables: list[tuple[str, ConnectorSettings | ConnectorSourceSettings]] = [
        ("connectors", connectors)
    ] + [
        (f"connectors.sources.{name}", override) for name, override in connectors.sources.items()
    ]
    for table, values in tables:
        for key, (low, high) in _CONNECTOR_RANGES.items():
            value = getattr(values, key)
            if value is not None and not low <= value <= high:
                raise ConfigError(f"{table}.{key} must be in {low:g}..{high:g}, not {value}")
    for name in SOURCES:
        effective = connectors.for_source(name)
        if effective["enabled"] and effective["timeout_ms"] > connectors.deadline_ms:
            raise ConfigError(
                f"connectors: {name}'s timeout_ms ({effective['timeout_ms']}) exceeds "
                f"deadline_ms ({connectors.deadline_ms}): it could never time out on its own"
            )


def load_partner_secrets(path: Path, environ: dict[str, str] | None = None) -> dict[str, bytes]:
    """Partner id → HMAC secret. LENDCORE_PARTNER_SECRET_<ID> overrides the file."""
    env = dict(os.environ) if environ is None else environ
    raw = _read_toml(path) if path.exists() else {"partners": []}
    secrets: dict[str, bytes] = {}
    for entry in raw.get("partners", []):
        partner_id = entry["id"]
        override = env.get(f"LENDCORE_PARTNER_SECRET_{partner_id.upper()}")
        secrets[partner_id] = (override or entry["secret"]).encode()
    return secrets


_MERCHANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def load_partner_merchants(path: Path) -> dict[str, frozenset[str]]:
    """Partner id → the merchants an entrusted payment (受托支付) of its may pay, for the
    partners whose entry lists `merchants`; the others may name any merchant."""
    raw = _read_toml(path) if path.exists() else {"partners": []}
    merchants: dict[str, frozenset[str]] = {}
    for entry in raw.get("partners", []):
        listed = entry.get("merchants")
        if listed is None:
            continue
        if not isinstance(listed, list) or not all(
                isinstance(m, str) and _MERCHANT_ID.fullmatch(m) for m in listed):
            raise ConfigError(f"{path.name}: merchants of partner {entry.get('id')!r} must be a "
                              "list of ids of 1-64 letters, digits, _ or -")
        merchants[entry["id"]] = frozenset(listed)
    return merchants


def _validate_outbox(outbox: OutboxSettings) -> None:
    if not 1 <= outbox.page_rows <= 10000:
        raise ConfigError("outbox.page_rows must be in 1..10000")
    if not 1 <= outbox.concurrency <= 1000:
        raise ConfigError("outbox.concurrency must be in 1..1000")
    if not 0 < outbox.timeout_s <= 60:
        raise ConfigError("outbox.timeout_s must be in (0, 60]")
    if not 1 <= outbox.max_attempts <= 100:
        raise ConfigError("outbox.max_attempts must be in 1..100")
    for name in ("sms_failure_per_mille", "payment_decline_per_mille"):
        if not 0 <= getattr(outbox, name) <= 1000:
            raise ConfigError(f"outbox.{name} must be in 0..1000")


def _validate_webhooks(webhooks: WebhookSettings) -> None:
    ranges: dict[str, tuple[float, float]] = {
        "poll_interval_s": (0.01, 60), "batch_max": (1, 10000), "concurrency": (1, 1000),
        "timeout_s": (0.1, 120), "max_attempts": (1, 100),
        "backoff_initial_s": (0.01, 86400), "backoff_max_s": (0.01, 7 * 86400),
        "claim_s": (1, 3600),
    }
    for name, (low, high) in ranges.items():
        value = getattr(webhooks, name)
        if not low <= value <= high:
            raise ConfigError(f"webhooks.{name} must be in {low:g}..{high:g}, not {value}")
    if webhooks.backoff_max_s < webhooks.backoff_initial_s:
        raise ConfigError("webhooks.backoff_max_s must be >= webhooks.backoff_initial_s")
    if webhooks.claim_s <= webhooks.timeout_s:
        raise ConfigError(
            "webhooks.claim_s must exceed webhooks.timeout_s: a claim must outlive the POST, "
            "or another round could send the event again while it is in flight")


class WebhookEndpoint(msgspec.Struct, frozen=True):
    """A partner's webhook endpoint declared in the partners file (config/partners.toml)."""

    partner_id: str
    url: str
    secret: bytes


def load_webhook_endpoints(
    path: Path, environ: dict[str, str] | None = None
) -> dict[str, WebhookEndpoint]:
    """Partner id → its endpoint, for the partners of the file that set `webhook_url`. The
    secret is LENDCORE_WEBHOOK_SECRET_<ID> (upper-cased id) if set, else `webhook_secret`;
    ConfigError when an endpoint has no secret or a URL that cannot be one."""
    env = dict(os.environ) if environ is None else environ
    raw = _read_toml(path) if path.exists() else {"partners": []}
    endpoints: dict[str, WebhookEndpoint] = {}
    for entry in raw.get("partners", []):
        partner_id = entry["id"]
        url = entry.get("webhook_url")
        variable = f"LENDCORE_WEBHOOK_SECRET_{partner_id.upper()}"
        secret = env.get(variable) or entry.get("webhook_secret")
        if url is None:
            if entry.get("webhook_secret") is not None:
                raise ConfigError(f"{path}: partner {partner_id}: webhook_secret without "
                                  "webhook_url")
            continue
        if not isinstance(url, str) or (problem := endpoint_url_problem(url)) is not None:
            raise ConfigError(f"{path}: partner {partner_id}: webhook_url "
                              f"{problem or 'must be a string'}")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{path}: partner {partner_id}: webhook_url needs a secret: "
                              f"webhook_secret in the file or {variable}")
        endpoints[partner_id] = WebhookEndpoint(partner_id, url, secret.encode())
    return endpoints
