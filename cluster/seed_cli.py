"""`lendcore seed --loans N`: bulk-create N active loans through POST /ops/seed.

Prints the API's answer (JSON: loans, seconds, business_date, partner_id, a sample of loan
ids) on stdout. Exit 0 when the seed finished, 1 when the API refused or failed it, 2 for a
configuration or usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

from cluster.cli_common import (
    OPERATOR_API,
    CommandError,
    chosen_base_url,
    load_command_settings,
    operator_token,
    ops_base_url,
    request_failed,
)

SEED_TIMEOUT_S = 3600.0


def main(ops_url: str | None, token: str | None, loans: int,
         config_file: Path | None = None) -> int:
    try:
        settings = load_command_settings("seed", config_file)
        base_url = chosen_base_url("seed", ops_url, ops_base_url(settings), OPERATOR_API)
        body = seed(base_url, operator_token("seed", token, settings), loans)
    except CommandError as error:
        print(error, file=sys.stderr)
        return error.exit_code
    print(f"seeded {body['loans']} loans in {body['seconds']:.1f} s", file=sys.stderr)
    print(json.dumps(body, indent=2))
    return 0


def seed(base_url: str, token: str, loans: int) -> dict[str, Any]:
    """POST /ops/seed; its answer, or CommandError naming what failed."""
    try:
        response = httpx.post(
            f"{base_url}/ops/seed", json={"loans": loans},
            headers={"Authorization": f"Bearer {token}"}, timeout=SEED_TIMEOUT_S,
        )
    except httpx.HTTPError as error:
        raise CommandError(request_failed("seed", base_url, OPERATOR_API, error)) from error
    if response.status_code != 200:
        raise CommandError(f"lendcore seed: HTTP {response.status_code}: {response.text}")
    body: dict[str, Any] = response.json()
    return body
