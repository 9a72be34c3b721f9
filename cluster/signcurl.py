"""Print (or run) a signed partner API request, for humans poking at a running gateway.

    lendcore sign POST /v1/loans '{"application_id": "..."}'
    lendcore sign --exec GET /v1/loans/L-1

(`python -m cluster.signcurl` is the same command.) The gateway's URL defaults to the one
`lendcore up` serves with the same settings (LENDCORE_API_PORT, [gateway] in the
configuration). The signature carries the current time: paste the printed command within
300 s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx

from cluster.cli_common import (
    PARTNER_API,
    CommandError,
    api_base_url,
    chosen_base_url,
    load_command_settings,
    request_failed,
)
from cluster.config import Settings, load_partner_secrets
from gateway.signing import signed_headers

DEV_PARTNER = "demo"
EXEC_TIMEOUT_S = 30.0


def main(argv: Sequence[str] | None = None, prog: str = "python -m cluster.signcurl") -> int:
    args = build_parser(prog).parse_args(argv)
    method = args.method.upper()
    path = args.path
    if not path.startswith("/"):
        raise SystemExit(f"PATH must start with '/': {path!r}")
    body = _body_bytes(args.json_body)
    idempotency_key = args.idempotency_key
    if idempotency_key is None and method == "POST":
        idempotency_key = str(uuid.uuid4())
    try:
        settings = load_command_settings("sign", args.config)
        base_url = chosen_base_url("sign", args.api_url, api_base_url(settings), PARTNER_API)
        secret = args.secret.encode("utf-8") if args.secret else configured_secret(
            settings, args.partner)
    except CommandError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    headers = signed_headers(
        args.partner,
        secret,
        method,
        path,
        body,
        now_s=int(time.time()),
        idempotency_key=idempotency_key,
    )
    url = base_url + path
    if args.exec:
        _require_wire_path(url, path)
        return _execute(method, url, base_url, headers, body)
    print(curl_command(method, url, headers, body))
    return 0


def configured_secret(settings: Settings, partner: str) -> bytes:
    """The partner's secret as the gateway loads it (partners file, then the environment's
    LENDCORE_PARTNER_SECRET_<ID>): the code holds no secret of its own."""
    secrets = load_partner_secrets(settings.resolve_path(settings.paths.partners_file))
    if partner not in secrets:
        raise CommandError(f"lendcore sign: partner {partner!r} is not configured: pass --secret")
    return secrets[partner]


def curl_command(method: str, url: str, headers: dict[str, str], body: bytes) -> str:
    # --path-as-is: curl would otherwise squash "/./" and "/../", changing the signed path.
    parts = ["curl", "-sS", "-i", "--path-as-is", "-X", method]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    if body:
        parts += ["--data-raw", body.decode("utf-8")]
    parts.append(url)
    return " ".join(shlex.quote(part) for part in parts)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print a signed curl command for the partner API (valid for 300 s), or "
                    "send the request with --exec.",
    )
    parser.add_argument("--partner", default=DEV_PARTNER,
                        help=f"the partner id to sign as (default: {DEV_PARTNER})")
    parser.add_argument("--secret", default=None,
                        help="the partner's HMAC secret (default: the partner's from the "
                             "configuration's partners file or LENDCORE_PARTNER_SECRET_<ID>)")
    parser.add_argument("--api-url", "--base", dest="api_url", default=None, metavar="URL",
                        help="the partner API (default: http://127.0.0.1:<api_port>, the port "
                             "from LENDCORE_API_PORT or the configuration, as `lendcore up` "
                             "serves it)")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="a TOML file layered over config/default.toml, as for "
                             "`lendcore up --config`")
    parser.add_argument(
        "--idempotency-key",
        default=None,
        help="reuse a key (to see a replay); POSTs get a fresh uuid4 otherwise",
    )
    parser.add_argument(
        "--exec", action="store_true", help="send the request now and print status and body"
    )
    parser.add_argument("method", metavar="METHOD", help="GET or POST")
    parser.add_argument("path", metavar="PATH", help="path with query string, e.g. /v1/loans/L-1")
    parser.add_argument("json_body", metavar="JSON_BODY", nargs="?", default=None,
                        help="the request body, sent exactly as typed (it is what is signed)")
    return parser


def _body_bytes(json_body: str | None) -> bytes:
    if json_body is None:
        return b""
    try:
        json.loads(json_body)
    except json.JSONDecodeError as error:
        raise SystemExit(f"JSON_BODY is not valid JSON: {error}") from error
    # Sent exactly as typed: the signature covers these bytes, not a re-serialisation.
    return json_body.encode("utf-8")


def _require_wire_path(url: str, path: str) -> None:
    # httpx percent-encodes and removes dot segments; the server would then verify a path
    # other than the one signed, and answer a puzzling 401.
    wire_path = httpx.URL(url).raw_path.decode("ascii")
    if wire_path != path:
        raise SystemExit(f"give PATH as it goes on the wire: {wire_path!r}, not {path!r}")


def _execute(
    method: str, url: str, base_url: str, headers: dict[str, str], body: bytes
) -> int:
    try:
        response = httpx.request(method, url, headers=headers, content=body, timeout=EXEC_TIMEOUT_S)
    except httpx.HTTPError as error:
        print(request_failed("sign", base_url, PARTNER_API, error), file=sys.stderr)
        return 2
    print(response.status_code)
    for name in ("Idempotent-Replayed", "Retry-After"):
        if name in response.headers:
            print(f"{name}: {response.headers[name]}")
    print(response.text)
    return 0 if response.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
