"""The shard host's heap: give back what a bulk batch freed, and collect cycles rarely; the
gateway's: what start-up built is frozen (`freeze_startup_heap`).

Cycle collection. The shard's own objects are untracked by the cycle collector (gc=False
Structs, bytes, dicts holding only those), but every batch builds tens of thousands of
short-lived tracked objects (lists of installments, journal entries, row tuples) that stay
alive while their commit waits on Postgres, beside other shards' batches. With Python's
default thresholds (700, 10, 10) the collector runs hundreds of times in one shard's end
of day (`python -m loadtests.bench_eod_shard --python-gc` counts them), for nothing: our
data has no cycles to find. `collect_rarely` raises the thresholds for the host process;
cycles (from libraries) are still collected.

A shard host holds its shards in memory for good, and builds large short-lived objects
beside them: a seed or end-of-day batch of 2,000 loans builds a Diff, journal entries and
encoded rows. Once freed, glibc keeps most of that in its heaps (it returns memory only from
the top of a heap, and the long-lived loans sit in between), and the host's RSS keeps it.
`malloc_trim(0)` hands every free page back; `lendcore bench --eod N` measures the RSS per
loan with it (`host_rss_bytes_per_loan`).
Without glibc (another libc, another OS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable

from lending.commands import Command, EodStep, SeedLoans


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the process's libc
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def is_bulk(commands: list[Command], eod_done: bool) -> bool:
    """Whether a batch freed enough to trim after it: a seed, or the end-of-day chunk that
    finished the shard's day. Not every end-of-day chunk: the next chunk would only fault
    the freed pages back in."""
    return any(
        isinstance(command, SeedLoans) or (isinstance(command, EodStep) and eod_done)
        for command in commands
    )


def release_free_memory() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


# A young collection every 50,000 net allocations of tracked objects instead of 700: a
# 2,000-loan chunk's objects are mostly freed (commit done) before one happens.
COLLECTOR_THRESHOLDS = (50_000, 20, 20)


def collect_rarely() -> None:
    """Set the shard host's cycle-collector thresholds (see the module doc)."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def freeze_startup_heap() -> int:
    """For a gateway process once it serves: move every object alive after start-up (Ray's,
    the libraries', the routes', the risk book's: about 155,000 tracked objects) out of the
    cycle collector's reach, and collect rarely as the shard hosts do. Returns how many
    objects were frozen.

    Those objects live as long as the process, and every full collection walked all of them
    again: 0.05-0.08 s each, one every few seconds under load; with some forty young
    collections a second, the collector took 6.6-6.8 % of the gateway's main thread in a
    repayment load (docs/performance.md), and none after. What a request allocates
    afterwards is collected as before, only less often."""
    gc.collect()  # start-up's own garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    return gc.get_freeze_count()
