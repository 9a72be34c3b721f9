"""`lendcore seed --loans N`: bulk-create N active loans through POST /ops/seed.

Prints the API's answer (JSON: loans, seconds, business_date, partner_id, a sample of loan
ids) on stdout. Exit 0 when the seed finished, 1 when the API refused or failed it.
"""

from __future__ import annotations

import json
import os
import sys

import httpx

from cluster.eod_cli import configured_admin_token

SEED_TIMEOUT_S = 3600.0


def main(ops_url: str, token: str | None, loans: int) -> int:
    token = token or os.environ.get("LENDCORE_OPS_TOKEN") or configured_admin_token()
    try:
        response = httpx.post(
            f"{ops_url.rstrip('/')}/ops/seed", json={"loans": loans},
            headers={"Authorization": f"Bearer {token}"}, timeout=SEED_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        print(f"lendcore seed: {exc}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"lendcore seed: HTTP {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    body = response.json()
    print(f"seeded {body['loans']} loans in {body['seconds']:.1f} s", file=sys.stderr)
    print(json.dumps(body, indent=2))
    return 0
