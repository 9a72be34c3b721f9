"""External data connectors (DOMAIN.md §6) behind one async interface, and their runner.

Each source of `lending.screening.SOURCES` is one `Connector`: `await query(request)` returns
the source's fields or raises. `ConnectorRunner.screen(request)` asks every enabled source at
once and always returns one `SourceResult` per source, never an exception:

* every call has its own timeout (`asyncio.timeout`) and is retried after a timeout or an
  error, with a small exponential backoff, `retries` times at most;
* every source has a circuit breaker (purgatory): after `breaker_failures` consecutive failed
  calls it fails fast (`circuit_open`, the source is not called) for `breaker_reset_s`, then
  lets calls through again (half-open): the first success closes it, a failure re-opens it;
* the whole screening has a deadline: each call's timeout and each backoff are cut to what is
  left of it, and `screen` returns by then whatever is still running;
* a source that did not answer is `SourceResult("unavailable", error=...)` with
  "timeout", "error" or "circuit_open" (its last call's outcome).

Each call runs in its own task, shielded from the caller: when the caller is cancelled (the
client went away) or the deadline passes, the call still ends by its own timeout and its true
outcome reaches the breaker and the metrics; a cancellation is never counted as the source's
failure.

The simulators (the development default; no network) answer from the ID number alone, as
API.md's sandbox conventions promise: sequence digits (characters 15–17) 900–999 mean a bad
credit file at `credit_bureau`; everything else is benign; a stable (unkeyed) hash of the ID
spreads the values inside the documented ranges (`simulated_answer`).

The clear ID number is in `SourceRequest` because real bureaus need it: it is never logged
(the request's repr is masked, failures are logged by exception type only).
"""

from __future__ import annotations

import abc
import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from datetime import date
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import Counter, Histogram
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from lending.screening import SOURCE_OK, SOURCE_UNAVAILABLE, SOURCES, SourceResult

if TYPE_CHECKING:
    # the breaker's type is not exported by purgatory: only annotated here
    from purgatory.service._async.circuitbreaker import AsyncCircuitBreaker

    from cluster.config import ConnectorSettings

log = logging.getLogger("lendcore.connectors")

Fields = dict[str, int | bool | str]

# Outcomes of one call (metrics label) and the `error` of an unavailable SourceResult.
OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"
CIRCUIT_OPEN = "circuit_open"
OUTCOMES = (OK, TIMEOUT, ERROR, CIRCUIT_OPEN)

SIMULATOR = "simulator"
BAD_FILE_SEQUENCES = range(900, 1000)  # API.md sandbox: these sequence digits = bad file

CALLS = Counter(
    "lendcore_connector_calls_total",
    "Calls to external data sources, retries included, by outcome",
    ["source", "outcome"],
)
CALL_LATENCY = Histogram(
    "lendcore_connector_call_seconds",
    "Latency of calls that reached an external data source (not circuit_open)",
    ["source"],
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)
RESULTS = Counter(
    "lendcore_connector_results_total",
    "Per-source screening results after retries: ok or why the source was unavailable",
    ["source", "outcome"],
)
SCREENING_LATENCY = Histogram(
    "lendcore_connector_screening_seconds",
    "Duration of one screening (all sources, concurrently)",
    buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
)


class SourceRequest(msgspec.Struct, frozen=True):
    """What the sources need about one application; nothing else leaves the gateway."""

    id_hash: str            # keyed lookup hash of the ID number (PiiVault.lookup_hash)
    id_number: str          # clear text: real bureaus need it. NEVER log it
    name: str
    phone: str
    birth_date: date | None
    amount: int             # the application amount, in fen

    def __repr__(self) -> str:  # keeps clear PII out of logs and tracebacks
        return (
            f"SourceRequest(id_hash={self.id_hash[:12]}…, id_number={_masked(self.id_number)}, "
            f"amount={self.amount})"
        )

    __str__ = __repr__


class SourceError(Exception):
    """A source failed: it answered an error, or an answer that cannot be used."""


class Connector(abc.ABC):
    """One external data source. The runner adds timeouts, retries, the breaker, metrics."""

    source: str  # a name of lending.screening.SOURCES

    @abc.abstractmethod
    async def query(self, request: SourceRequest) -> Fields:
        """The source's fields for this applicant, or an exception (any counts as "error",
        TimeoutError as "timeout")."""

    def answers_at_once(self, request: SourceRequest) -> bool:
        """True when `query(request)` surely returns without waiting on anything (a local
        stand-in): the runner then calls it inline, without a task, a timer or a shield,
        which cannot matter for a call that never suspends. A real source never does."""
        return False


# ---- simulators -------------------------------------------------------------------------


def id_sequence(id_number: str) -> int | None:
    """The sequence digits (characters 15–17) of an ID number, None if they are not digits."""
    digits = id_number[14:17]
    if len(digits) == 3 and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def has_bad_file(id_number: str) -> bool:
    return id_sequence(id_number) in BAD_FILE_SEQUENCES


def simulated_answer(source: str, id_number: str) -> Fields:
    """The simulator's answer of `source` for this ID number (deterministic).

    Sequence 900–999: credit_bureau reports a bad file (bad, score 300..450, 3..9 overdue
    accounts, debt ratio 70..95 %). Every other answer is benign: credit_bureau score
    600..850, 0 overdue, debt ratio 0..40 %; baihang 0..2 lenders in 90 days; pengyuan 0
    lawsuits; tongdun fraud score 0..30; baiqishi no flag; zhima 600..800; police_id match;
    face_match similarity 85..99; esign ok. Ranges are inclusive.
    """
    key = id_number.upper()

    def draw(field: str, low: int, high: int) -> int:
        digest = hashlib.blake2b(f"{source}:{field}:{key}".encode(), digest_size=8).digest()
        return low + int.from_bytes(digest, "big") % (high - low + 1)

    match source:
        case "credit_bureau":
            if has_bad_file(key):
                return {
                    "bad": True,
                    "score": draw("score", 300, 450),
                    "overdue_accounts": draw("overdue_accounts", 3, 9),
                    "debt_ratio_pct": draw("debt_ratio_pct", 70, 95),
                }
            return {
                "bad": False,
                "score": draw("score", 600, 850),
                "overdue_accounts": 0,
                "debt_ratio_pct": draw("debt_ratio_pct", 0, 40),
            }
        case "baihang":
            return {"multi_lending_90d": draw("multi_lending_90d", 0, 2)}
        case "pengyuan":
            return {"lawsuits": 0}
        case "tongdun":
            return {"fraud_score": draw("fraud_score", 0, 30)}
        case "baiqishi":
            return {"risk_flag": False}
        case "zhima":
            return {"score": draw("score", 600, 800)}
        case "police_id":
            return {"match": True}
        case "face_match":
            return {"similarity": draw("similarity", 85, 99)}
        case "esign":
            return {"ok": True}
    raise ValueError(f"no simulator for source {source!r}")


class SimulatedConnector(Connector):
    """A deterministic stand-in for one source (no network).

    Latency: `latency_ms` + 0..`jitter_ms` derived from the ID number (same ID, same delay).
    Failures: each call fails with SourceError with probability `failure_rate`, drawn from a
    random generator seeded by (`seed`, source), so a run is reproducible; 1.0 always fails.
    The attributes may be changed while running (tests make a source slow or broken, then
    heal it); `calls` counts the queries that reached it.
    """

    def __init__(
        self,
        source: str,
        *,
        latency_ms: int = 0,
        jitter_ms: int = 0,
        failure_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if source not in SOURCES:
            raise ValueError(f"no simulator for source {source!r}")
        self.source = source
        self.latency_ms = latency_ms
        self.jitter_ms = jitter_ms
        self.failure_rate = failure_rate
        self.calls = 0
        # The simulator's failure draws, reproducible from the seed: not a secret.
        self._rng = random.Random(f"{seed}:{source}")  # nosec B311

    def delay_ms(self, id_number: str) -> int:
        if self.jitter_ms <= 0:
            return self.latency_ms
        digest = hashlib.blake2b(
            f"{self.source}:jitter:{id_number.upper()}".encode(), digest_size=8
        ).digest()
        return self.latency_ms + int.from_bytes(digest, "big") % (self.jitter_ms + 1)

    def answers_at_once(self, request: SourceRequest) -> bool:
        return self.failure_rate <= 0 and self.delay_ms(request.id_number) <= 0

    async def query(self, request: SourceRequest) -> Fields:
        self.calls += 1
        delay = self.delay_ms(request.id_number)
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        if self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            raise SourceError(f"{self.source}: simulated failure")
        return simulated_answer(self.source, request.id_number)


# ---- runner -----------------------------------------------------------------------------


class SourcePolicy(msgspec.Struct, frozen=True):
    """How one source is called ([connectors] keys, see docs/operations.md)."""

    timeout_ms: int = 1000
    retries: int = 1
    retry_backoff_ms: int = 50
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0


class _SourceMetrics:
    """One source's children of the connector metrics, labelled once."""

    __slots__ = ("calls", "latency", "results")

    def __init__(self, source: str) -> None:
        outcomes = (OK, TIMEOUT, ERROR, CIRCUIT_OPEN)
        self.calls = {outcome: CALLS.labels(source, outcome) for outcome in outcomes}
        self.results = {outcome: RESULTS.labels(source, outcome) for outcome in outcomes}
        self.latency = CALL_LATENCY.labels(source)


class ConnectorRunner:
    """Queries all its sources concurrently for one application; see the module docstring.

    One runner per gateway process (the breakers are in memory, per process). Call
    `aclose()` at shutdown to end the calls still running in the background.
    """

    def __init__(
        self,
        connectors: Mapping[str, Connector],
        *,
        deadline_ms: int,
        policies: Mapping[str, SourcePolicy] | None = None,
        default_policy: SourcePolicy | None = None,
    ) -> None:
        unknown = sorted(set(connectors) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; known: {list(SOURCES)}")
        if deadline_ms < 1:
            raise ValueError("deadline_ms must be at least 1")
        policies = policies or {}
        default = default_policy or SourcePolicy()
        # in SOURCES order, so results (and logs) always list sources the same way
        self._connectors = {name: connectors[name] for name in SOURCES if name in connectors}
        self._policies = {name: policies.get(name, default) for name in self._connectors}
        self._deadline_s = deadline_ms / 1000
        self._breakers = AsyncCircuitBreakerFactory()
        # Each source's breaker, got once: the factory keeps a breaker's state in memory, in
        # the context object every get_breaker wraps, so the wrapper can be kept (asking the
        # factory went through its unit of work twice a call, nine calls an application).
        self._breaker_of: dict[str, AsyncCircuitBreaker] = {}
        # Each source's metric children, labelled once (labels() took a lock and built
        # tuples: three times per source and application).
        self._metrics = {name: _SourceMetrics(name) for name in self._connectors}
        self._calls: set[asyncio.Task[tuple[str, Fields]]] = set()

    @classmethod
    def from_settings(cls, settings: ConnectorSettings) -> ConnectorRunner:
        """The runner of the [connectors] settings (cluster/config.py validated them)."""
        if settings.mode != SIMULATOR:
            raise ValueError(f"connectors.mode {settings.mode!r} is not available")
        connectors: dict[str, Connector] = {}
        policies: dict[str, SourcePolicy] = {}
        for name in SOURCES:
            values = settings.for_source(name)
            if not values["enabled"]:
                continue
            connectors[name] = SimulatedConnector(
                name,
                latency_ms=values["simulator_latency_ms"],
                jitter_ms=values["simulator_jitter_ms"],
                failure_rate=values["simulator_failure_rate"],
                seed=settings.simulator_seed,
            )
            policies[name] = SourcePolicy(
                timeout_ms=values["timeout_ms"],
                retries=values["retries"],
                retry_backoff_ms=values["retry_backoff_ms"],
                breaker_failures=values["breaker_failures"],
                breaker_reset_s=values["breaker_reset_s"],
            )
        return cls(connectors, policies=policies, deadline_ms=settings.deadline_ms)

    @property
    def sources(self) -> tuple[str, ...]:
        """The enabled sources: the keys of every `screen` result."""
        return tuple(self._connectors)

    def connector(self, source: str) -> Connector:
        return self._connectors[source]

    async def breaker_state(self, source: str) -> str:
        """"closed", "opened" or "half-opened" (for ops views and tests)."""
        breaker = self._breaker_of.get(source) or await self._breaker(source)
        return breaker.context.state

    async def screen(self, request: SourceRequest) -> dict[str, SourceResult]:
        """One SourceResult per enabled source, within the deadline. Never raises, except
        CancelledError when the caller is cancelled."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._deadline_s
        inline = [name for name, c in self._connectors.items() if c.answers_at_once(request)]
        tasks = {
            name: loop.create_task(self._query_source(name, request, deadline))
            for name in self._connectors if name not in inline
        }
        answered: dict[str, SourceResult] = {}
        try:
            for name in inline:  # local stand-ins: answered before anything else runs
                answered[name] = await self._query_inline(name, request, deadline)
            if tasks:
                await asyncio.wait(tasks.values(), timeout=max(0.0, deadline - loop.time()))
        finally:
            for task in tasks.values():
                if not task.done():
                    task.cancel()  # its call in flight goes on, shielded, to its own timeout
        results: dict[str, SourceResult] = {}
        for name in self._connectors:
            result = answered[name] if name in inline else _result_of(name, tasks[name])
            self._metrics[name].results[result.error or OK].inc()
            results[name] = result
        SCREENING_LATENCY.observe(loop.time() - started)
        return results

    async def aclose(self) -> None:
        """Cancel the calls still running and wait for them to end."""
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)

    async def _query_inline(
        self, name: str, request: SourceRequest, deadline: float
    ) -> SourceResult:
        """_query_source without a task; a bug in the runner is the source's `error`, as a
        task's would be (_result_of)."""
        try:
            return await self._query_source(name, request, deadline)
        except Exception as exc:  # noqa: BLE001 - the screening goes on without this source
            log.error("screening of %s failed: %s", name, type(exc).__name__)
            return SourceResult(SOURCE_UNAVAILABLE, error=ERROR)

    async def _query_source(
        self, name: str, request: SourceRequest, deadline: float
    ) -> SourceResult:
        policy = self._policies[name]
        loop = asyncio.get_running_loop()
        outcome = TIMEOUT
        for attempt in range(policy.retries + 1):
            if attempt:
                backoff = policy.retry_backoff_ms / 1000 * 2 ** (attempt - 1)
                if loop.time() + backoff >= deadline:
                    break  # no time left for another call: the last outcome stands
                if backoff > 0:
                    await asyncio.sleep(backoff)
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            timeout_s = min(policy.timeout_ms / 1000, remaining)
            outcome, fields = await self._call(name, request, timeout_s)
            if outcome == OK:
                return SourceResult(SOURCE_OK, fields)
            if outcome == CIRCUIT_OPEN:
                break  # fail fast: retrying an open breaker is pointless
        return SourceResult(SOURCE_UNAVAILABLE, error=outcome)

    async def _call(
        self, name: str, request: SourceRequest, timeout_s: float
    ) -> tuple[str, Fields]:
        """One call in its own task, shielded: cancelling the caller does not cut it short,
        so the breaker only ever sees the source's own outcomes. A call that answers at once
        cannot be cut short: it runs inline."""
        if self._connectors[name].answers_at_once(request):
            return await self._attempt(name, request, timeout_s)
        call = asyncio.get_running_loop().create_task(self._attempt(name, request, timeout_s))
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return await asyncio.shield(call)

    async def _attempt(
        self, name: str, request: SourceRequest, timeout_s: float
    ) -> tuple[str, Fields]:
        started = time.perf_counter()
        fields: Fields = {}
        metrics = self._metrics[name]
        try:
            breaker = self._breaker_of.get(name) or await self._breaker(name)
            connector = self._connectors[name]
            async with breaker:
                if connector.answers_at_once(request):  # never suspends: no timer to arm
                    fields = _checked(name, await connector.query(request))
                else:
                    async with asyncio.timeout(timeout_s):
                        fields = _checked(name, await connector.query(request))
        except OpenedState as exc:
            # purgatory raises the SAME exception object on every fast failure: drop what
            # each raise adds to it, or its traceback (and the frames it holds, with the
            # requests in them) grows for as long as the breaker stays open.
            exc.__traceback__ = None
            exc.__context__ = None
            metrics.calls[CIRCUIT_OPEN].inc()
            return CIRCUIT_OPEN, {}
        except TimeoutError:
            outcome = TIMEOUT
        except Exception as exc:  # noqa: BLE001 - a failing source is a result, never raised
            # by type only: a connector's message may quote the request
            log.warning("connector %s failed: %s", name, type(exc).__name__)
            outcome = ERROR
        else:
            outcome = OK
        metrics.latency.observe(time.perf_counter() - started)
        metrics.calls[outcome].inc()
        return outcome, fields

    async def _breaker(self, name: str) -> AsyncCircuitBreaker:
        policy = self._policies[name]
        breaker = await self._breakers.get_breaker(
            name, policy.breaker_failures, policy.breaker_reset_s
        )
        self._breaker_of[name] = breaker
        return breaker


def _checked(name: str, fields: object) -> Fields:
    if not isinstance(fields, dict) or not all(
        isinstance(key, str) and isinstance(value, int | bool | str)
        for key, value in fields.items()
    ):
        raise SourceError(f"{name}: answer is not a flat dict of int, bool or str")
    return dict(fields)


def _result_of(name: str, task: asyncio.Task[SourceResult]) -> SourceResult:
    if not task.done() or task.cancelled():
        return SourceResult(SOURCE_UNAVAILABLE, error=TIMEOUT)  # still running at the deadline
    error = task.exception()
    if error is not None:  # a bug in the runner itself; the screening goes on without it
        log.error("screening of %s failed: %s", name, type(error).__name__)
        return SourceResult(SOURCE_UNAVAILABLE, error=ERROR)
    return task.result()


def _masked(id_number: str) -> str:
    if len(id_number) < 8:
        return "*" * len(id_number)
    return id_number[:4] + "*" * (len(id_number) - 8) + id_number[-4:]
