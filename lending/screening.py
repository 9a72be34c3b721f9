"""What the gateway learns about an application before the customer's shard decides it.

Some checks cannot live in one shard: velocity and blacklists cross customers (Redis), and
external data sources are slow network calls (connectors). The gateway runs them first, then
sends their results inside the SubmitApplication command; the shard's decision stays pure and
replayable from the command alone (DOMAIN.md §6 pipeline: validate → identify → admission →
anti-fraud → external data → scorecard → decision rules → pricing and limit → offer).

The contract between the two halves:
* `Velocity`: counts of EARLIER applications inside each configured sliding window (the
  current one is not counted), and distinct identities / partners seen.
* `BlacklistHits`: whether the ID number, phone or device is on an operator's blacklist.
* `SourceResult` per external source: `ok` with its fields, or `unavailable` (timeout, error,
  open circuit) with no fields; rules decide what an unavailable source means.
"""

from __future__ import annotations

import msgspec

SOURCE_OK = "ok"
SOURCE_UNAVAILABLE = "unavailable"

# External data sources (DOMAIN.md §6), by the names rules use.
CREDIT_BUREAU = "credit_bureau"    # 人行征信
BAIHANG = "baihang"                # 百行征信
PENGYUAN = "pengyuan"              # 鹏元征信
TONGDUN = "tongdun"                # 同盾 (fraud score)
BAIQISHI = "baiqishi"              # 白骑士 (fraud flags)
ZHIMA = "zhima"                    # 芝麻信用 (credit score)
POLICE_ID = "police_id"            # 公安身份核查
FACE_MATCH = "face_match"          # 人脸识别
ESIGN = "esign"                    # 电子签章
SOURCES = (CREDIT_BUREAU, BAIHANG, PENGYUAN, TONGDUN, BAIQISHI, ZHIMA, POLICE_ID, FACE_MATCH,
           ESIGN)


class Velocity(msgspec.Struct, frozen=True):
    """Earlier applications inside each configured window (config [antifraud])."""

    id_number: int = 0          # same ID number (keyed hash)
    phone: int = 0              # same phone (keyed hash)
    device: int = 0             # same device id
    ip: int = 0                 # same IP address
    device_identities: int = 0  # distinct OTHER ID numbers seen on this device
    id_partners: int = 0        # distinct OTHER partners this ID number applied through (多头)


class BlacklistHits(msgspec.Struct, frozen=True):
    id_number: bool = False
    phone: bool = False
    device: bool = False


class SourceResult(msgspec.Struct, frozen=True):
    status: str  # SOURCE_OK or SOURCE_UNAVAILABLE
    fields: dict[str, int | bool | str] = msgspec.field(default_factory=dict)
    error: str = ""  # why it is unavailable: "timeout", "error", "circuit_open"


class Screening(msgspec.Struct, frozen=True):
    velocity: Velocity = Velocity()
    blacklist: BlacklistHits = BlacklistHits()
    sources: dict[str, SourceResult] = msgspec.field(default_factory=dict)
