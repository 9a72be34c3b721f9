"""What the client commands (`lendcore sign`, `eod`, `seed`) share: where the running system
listens unless told otherwise, the operator token they send, and errors that say what to
change.

Their defaults come from the same settings `lendcore up` reads (config/default.toml, a
`--config` file, then LENDCORE_* variables), so a system started with LENDCORE_OPS_PORT=9081
is found by `lendcore eod` run in a shell with the same variable, without a flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from cluster.config import ConfigError, Settings, load_settings

# A server bound to every interface is dialled on the loopback by a client on this machine.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # nosec B104  # compared, never bound


@dataclass(frozen=True)
class Endpoint:
    """One of the two HTTP servers: the flag that overrides its URL and where its default
    comes from, both named in error messages."""

    flag: str
    port_variable: str
    config_key: str


PARTNER_API = Endpoint("--api-url", "LENDCORE_API_PORT", "[gateway] api_host/api_port")
OPERATOR_API = Endpoint("--ops-url", "LENDCORE_OPS_PORT", "[gateway] ops_host/ops_port")


class CommandError(Exception):
    """A client command cannot go on; the message is the one line the user sees."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_command_settings(command: str, config_file: Path | None) -> Settings:
    """The settings `lendcore up --config FILE` would run with; a broken configuration is
    the user's to fix, so it is one line naming the command, not a traceback."""
    try:
        return load_settings(config_file)
    except ConfigError as error:
        raise CommandError(f"lendcore {command}: configuration error: {error}", 2) from error


def dialled_host(host: str) -> str:
    """How a client on this machine writes the host a server is bound to, in a URL."""
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    if ":" in host:  # an IPv6 literal
        return f"[{host}]"
    return host


def api_base_url(settings: Settings) -> str:
    gateway = settings.gateway
    return f"http://{dialled_host(gateway.api_host)}:{gateway.api_port}"


def ops_base_url(settings: Settings) -> str:
    gateway = settings.gateway
    return f"http://{dialled_host(gateway.ops_host)}:{gateway.ops_port}"


def chosen_base_url(command: str, given: str | None, default: str, endpoint: Endpoint) -> str:
    """The flag's URL, else the default from the settings; refused unless it is an http(s)
    URL with a host (httpx would otherwise fail later with an error naming neither)."""
    url = (given or default).rstrip("/")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise CommandError(f"lendcore {command}: {endpoint.flag} {url!r}: {error}", 2) from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CommandError(
            f"lendcore {command}: {endpoint.flag} must be an http:// or https:// URL with a "
            f"host, not {url!r}", 2)
    return url


def operator_token(command: str, given: str | None, settings: Settings) -> str:
    """--token, else $LENDCORE_OPS_TOKEN, else the configuration's first admin operator
    (the dev admin of config/default.toml): the code holds no token of its own."""
    if given:
        return given
    from_environment = os.environ.get("LENDCORE_OPS_TOKEN")
    if from_environment:
        return from_environment
    for operator in settings.operators:
        if "admin" in operator.roles:
            return operator.token
    raise CommandError(f"lendcore {command}: no admin operator configured: pass --token or "
                       f"set LENDCORE_OPS_TOKEN")


def request_failed(command: str, url: str, endpoint: Endpoint, error: httpx.HTTPError) -> str:
    """The one line a failed request prints: the URL tried and, when nothing answered there,
    how to point the command elsewhere."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return (
            f"lendcore {command}: cannot connect to {url} ({error}). Is `lendcore up` running "
            f"there? Pass {endpoint.flag} URL to use another address (the default comes from "
            f"{endpoint.port_variable} and the configuration's {endpoint.config_key})."
        )
    return f"lendcore {command}: request to {url} failed: {type(error).__name__}: {error}"
