"""Settings: config/default.toml, then an optional --config file, then LENDCORE_* env vars.

The layering is API.md's configuration contract. Every key is typed (msgspec) so a typo in
a config file is an error at start-up, not a silent default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from lending.daily import ServicingPolicy

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


class ClusterSettings(msgspec.Struct, forbid_unknown_fields=True):
    ray_address: str = ""
    ray_num_cpus: int = 2
    ray_object_store_mb: int = 96
    logical_shards: int = 16
    shard_hosts: int = 2
    initial_business_date: str = ""


class ShardSettings(msgspec.Struct, forbid_unknown_fields=True):
    inbox_max: int = 20000
    batch_max: int = 1000
    lease_claim_ttl_ms: int = 5000


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True):
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    ops_host: str = "127.0.0.1"
    ops_port: int = 8081
    body_max_bytes: int = 1048576
    ray_call_items_max: int = 2000
    calls_in_flight_max: int = 4
    pending_max: int = 50000
    retry_deadline_s: float = 15.0
    clock_skew_max_s: int = 300
    nonce_ttl_s: int = 600
    idempotency_ttl_s: int = 90000
    rate_per_partner_s: float = 20000.0
    rate_burst: int = 40000


class RiskSettings(msgspec.Struct, forbid_unknown_fields=True):
    apr_cap_bps: int = 2400
    offer_valid_days: int = 7
    review_amount_over: int = 5000000
    income_min: int = 1000000
    age_min: int = 22
    age_max: int = 55
    limit_income_multiple_pct: int = 500
    limit_max: int = 20000000


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
    servicing: ServicingPolicy = msgspec.field(default_factory=ServicingPolicy)
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
    shards_per_host = -(-cluster.logical_shards // cluster.shard_hosts)
    if settings.storage.pool_size_per_host < shards_per_host + 1:
        # each serving shard holds a connection; one more for loads and lease checks
        raise ConfigError(
            f"storage.pool_size_per_host must be at least {shards_per_host + 1} "
            f"(shards per host + 1)"
        )
    if not 1 <= settings.shard.batch_max <= 10000:
        raise ConfigError("shard.batch_max must be in 1..10000")
    try:
        settings.servicing.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    for name in ("pii_key_hex", "hash_key_hex"):
        value = getattr(settings.security, name)
        if len(bytes.fromhex(value)) != 32:
            raise ConfigError(f"security.{name} must be 32 bytes of hex")


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
