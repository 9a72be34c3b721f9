"""External data connectors: simulator answers, timeouts, retries, breakers, the deadline,
metrics. Real asyncio and real sleeps (short); the sources are real Connector objects whose
calls are counted, nothing inside the runner is mocked."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import uvloop
from prometheus_client import REGISTRY

from cluster.config import ConfigError, load_settings
from gateway.connectors import (
    CIRCUIT_OPEN,
    ERROR,
    OK,
    TIMEOUT,
    Connector,
    ConnectorRunner,
    Fields,
    SimulatedConnector,
    SourcePolicy,
    SourceRequest,
    has_bad_file,
    id_sequence,
    simulated_answer,
)
from lending.identity import make_id_number
from lending.screening import (
    CREDIT_BUREAU,
    SOURCE_OK,
    SOURCE_UNAVAILABLE,
    SOURCES,
    TONGDUN,
    ZHIMA,
    SourceResult,
)

BIRTH = date(1990, 5, 17)
BENIGN_ID = make_id_number("110105", BIRTH, 123)
BAD_ID = make_id_number("110105", BIRTH, 950)

BENIGN_RANGES: dict[str, dict[str, tuple[int, int] | bool]] = {
    "credit_bureau": {
        "bad": False, "score": (600, 850), "overdue_accounts": (0, 0), "debt_ratio_pct": (0, 40),
    },
    "baihang": {"multi_lending_90d": (0, 2)},
    "pengyuan": {"lawsuits": (0, 0)},
    "tongdun": {"fraud_score": (0, 30)},
    "baiqishi": {"risk_flag": False},
    "zhima": {"score": (600, 800)},
    "police_id": {"match": True},
    "face_match": {"similarity": (85, 99)},
    "esign": {"ok": True},
}
BAD_BUREAU: dict[str, tuple[int, int] | bool] = {
    "bad": True, "score": (300, 450), "overdue_accounts": (3, 9), "debt_ratio_pct": (70, 95),
}


def request_for(id_number: str = BENIGN_ID) -> SourceRequest:
    return SourceRequest(
        id_hash="ab" * 32, id_number=id_number, name="张三", phone="13800138000",
        birth_date=BIRTH, amount=500000,
    )


def simulators(**per_source: dict[str, float]) -> dict[str, SimulatedConnector]:
    connectors = {name: SimulatedConnector(name) for name in SOURCES}
    for name, attributes in per_source.items():
        for attribute, value in attributes.items():
            setattr(connectors[name], attribute, value)
    return connectors


def make_runner(
    connectors: Mapping[str, Connector], deadline_ms: int = 2000, **policy: Any
) -> ConnectorRunner:
    return ConnectorRunner(
        connectors, deadline_ms=deadline_ms, default_policy=SourcePolicy(**policy)
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def calls_metric(source: str, outcome: str) -> float:
    return sample("lendcore_connector_calls_total", source=source, outcome=outcome)


def results_metric(source: str, outcome: str) -> float:
    return sample("lendcore_connector_results_total", source=source, outcome=outcome)


def assert_in_ranges(fields: Fields, expected: dict[str, tuple[int, int] | bool]) -> None:
    assert set(fields) == set(expected)
    for key, want in expected.items():
        value = fields[key]
        if isinstance(want, bool):
            assert value is want, key
        else:
            assert type(value) is int, key
            assert want[0] <= value <= want[1], (key, value)


# ---- simulators -------------------------------------------------------------------------


def test_sequence_digits_pick_the_bad_file() -> None:
    assert id_sequence(BENIGN_ID) == 123
    assert id_sequence(BAD_ID) == 950
    assert id_sequence("short") is None
    assert not has_bad_file(make_id_number("110105", BIRTH, 899))
    assert has_bad_file(make_id_number("110105", BIRTH, 900))
    assert has_bad_file(make_id_number("110105", BIRTH, 999))


def test_benign_answers_are_in_range_and_deterministic() -> None:
    scores = set()
    for sequence in range(0, 900, 7):
        id_number = make_id_number("440305", BIRTH, sequence)
        for source in SOURCES:
            answer = simulated_answer(source, id_number)
            assert_in_ranges(answer, BENIGN_RANGES[source])
            assert simulated_answer(source, id_number) == answer
        scores.add(simulated_answer(CREDIT_BUREAU, id_number)["score"])
    assert len(scores) > 20  # the hash spreads the values


def test_bad_file_answers() -> None:
    for sequence in range(900, 1000, 3):
        id_number = make_id_number("310101", BIRTH, sequence)
        assert_in_ranges(simulated_answer(CREDIT_BUREAU, id_number), BAD_BUREAU)
        for source in SOURCES:
            if source != CREDIT_BUREAU:
                assert_in_ranges(simulated_answer(source, id_number), BENIGN_RANGES[source])


def test_lower_case_x_answers_like_upper_case() -> None:
    id_number = next(
        make_id_number("110105", BIRTH, s) for s in range(1000)
        if make_id_number("110105", BIRTH, s).endswith("X")
    )
    for source in SOURCES:
        assert simulated_answer(source, id_number.lower()) == simulated_answer(source, id_number)


def test_jitter_is_derived_from_the_id_and_failures_are_seeded() -> None:
    connector = SimulatedConnector(ZHIMA, latency_ms=20, jitter_ms=10)
    delays = {connector.delay_ms(make_id_number("110105", BIRTH, s)) for s in range(200)}
    assert delays <= set(range(20, 31)) and len(delays) > 5
    assert connector.delay_ms(BENIGN_ID) == connector.delay_ms(BENIGN_ID)

    async def outcomes(seed: int) -> list[bool]:
        flaky = SimulatedConnector(ZHIMA, failure_rate=0.5, seed=seed)
        result = []
        for _ in range(40):
            try:
                await flaky.query(request_for())
                result.append(True)
            except Exception:  # noqa: BLE001
                result.append(False)
        return result

    first = asyncio.run(outcomes(7))
    assert first == asyncio.run(outcomes(7))
    assert 5 < first.count(False) < 35


def test_request_repr_hides_pii() -> None:
    text = repr(request_for()) + str(request_for())
    assert BENIGN_ID not in text and "张三" not in text and "13800138000" not in text
    assert BENIGN_ID[:4] in text


# ---- runner -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_screen_answers_every_source() -> None:
    runner = make_runner(simulators())
    for id_number in (BENIGN_ID, BAD_ID):
        results = await runner.screen(request_for(id_number))
        assert list(results) == list(SOURCES)
        for source, result in results.items():
            assert result == SourceResult(SOURCE_OK, simulated_answer(source, id_number))
    assert (await runner.screen(request_for(BAD_ID)))[CREDIT_BUREAU].fields["bad"] is True


def test_screen_under_uvloop() -> None:
    runner = make_runner(simulators(zhima={"latency_ms": 5, "jitter_ms": 5}))
    results = uvloop.run(runner.screen(request_for()))
    assert all(result.status == SOURCE_OK for result in results.values())


@pytest.mark.asyncio
async def test_sources_are_queried_concurrently() -> None:
    connectors = {name: SimulatedConnector(name, latency_ms=100) for name in SOURCES}
    runner = make_runner(connectors)
    started = time.perf_counter()
    results = await runner.screen(request_for())
    assert time.perf_counter() - started < 0.5  # 9 × 100 ms one after another would be 0.9 s
    assert all(result.status == SOURCE_OK for result in results.values())


class TaskRecorder(SimulatedConnector):
    """A simulator that notes the task each query runs in."""

    def __init__(self, source: str, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def query(self, request: SourceRequest) -> Fields:
        self.tasks.append(asyncio.current_task())
        return await super().query(request)


@pytest.mark.asyncio
async def test_a_source_that_answers_at_once_is_queried_inline_and_a_slow_one_in_a_task() -> None:
    quick = TaskRecorder(CREDIT_BUREAU)
    slow = TaskRecorder("zhima", latency_ms=1)
    connectors: dict[str, Connector] = {**simulators(), CREDIT_BUREAU: quick, "zhima": slow}
    runner = make_runner(connectors)
    assert quick.answers_at_once(request_for()) and not slow.answers_at_once(request_for())
    screening = asyncio.current_task()
    results = await runner.screen(request_for())
    assert all(result.status == SOURCE_OK for result in results.values())
    assert quick.tasks == [screening]  # no task, timer or shield for a local stand-in
    assert len(slow.tasks) == 1 and slow.tasks[0] is not screening
    # a simulator that may fail is not "at once": it keeps its own task, retries and timeout
    slow.latency_ms, quick.failure_rate = 0, 0.5
    assert slow.answers_at_once(request_for()) and not quick.answers_at_once(request_for())


@pytest.mark.asyncio
async def test_slow_source_times_out_after_one_plus_retries_calls() -> None:
    connectors = simulators(tongdun={"latency_ms": 300})
    runner = make_runner(connectors, timeout_ms=30, retries=2, retry_backoff_ms=5,
                         breaker_failures=100)
    timeouts = calls_metric(TONGDUN, TIMEOUT)
    results_before = results_metric(TONGDUN, TIMEOUT)
    latency_count = sample("lendcore_connector_call_seconds_count", source=TONGDUN)
    started = time.perf_counter()
    results = await runner.screen(request_for())
    elapsed = time.perf_counter() - started
    assert results[TONGDUN] == SourceResult(SOURCE_UNAVAILABLE, error=TIMEOUT)
    assert connectors[TONGDUN].calls == 3
    assert 0.09 <= elapsed < 0.3  # 3 × 30 ms + 5 + 10 ms of backoff
    assert all(results[name].status == SOURCE_OK for name in SOURCES if name != TONGDUN)
    assert all(connectors[name].calls == 1 for name in SOURCES if name != TONGDUN)
    assert calls_metric(TONGDUN, TIMEOUT) - timeouts == 3
    assert results_metric(TONGDUN, TIMEOUT) - results_before == 1
    assert sample("lendcore_connector_call_seconds_count", source=TONGDUN) - latency_count == 3
    await runner.aclose()


@pytest.mark.asyncio
async def test_erroring_source_is_retried_then_reported_as_error() -> None:
    connectors = simulators(zhima={"failure_rate": 1.0})
    runner = make_runner(connectors, retries=2, retry_backoff_ms=1, breaker_failures=100)
    errors, oks = calls_metric(ZHIMA, ERROR), calls_metric(CREDIT_BUREAU, OK)
    results = await runner.screen(request_for())
    assert results[ZHIMA] == SourceResult(SOURCE_UNAVAILABLE, error=ERROR)
    assert connectors[ZHIMA].calls == 3
    assert calls_metric(ZHIMA, ERROR) - errors == 3
    assert calls_metric(CREDIT_BUREAU, OK) - oks == 1


class FailsOnce(Connector):
    """Fails its first call, then answers like the simulator."""

    def __init__(self, source: str, failure: BaseException) -> None:
        self.source = source
        self.failure = failure
        self.calls = 0

    async def query(self, request: SourceRequest) -> Fields:
        self.calls += 1
        if self.calls == 1:
            raise self.failure
        return simulated_answer(self.source, request.id_number)


@pytest.mark.asyncio
async def test_a_retry_recovers_a_transient_failure() -> None:
    flaky = FailsOnce(ZHIMA, ConnectionResetError("peer reset"))
    runner = make_runner({ZHIMA: flaky}, retries=1, retry_backoff_ms=1)
    results = await runner.screen(request_for())
    assert results == {ZHIMA: SourceResult(SOURCE_OK, simulated_answer(ZHIMA, BENIGN_ID))}
    assert flaky.calls == 2


@pytest.mark.asyncio
async def test_breaker_opens_fails_fast_then_half_opens() -> None:
    connectors = simulators(zhima={"failure_rate": 1.0})
    runner = make_runner(connectors, retries=0, breaker_failures=3, breaker_reset_s=0.2)
    open_before = calls_metric(ZHIMA, CIRCUIT_OPEN)
    open_results = results_metric(ZHIMA, CIRCUIT_OPEN)
    for _ in range(3):
        assert (await runner.screen(request_for()))[ZHIMA].error == ERROR
    assert connectors[ZHIMA].calls == 3
    assert await runner.breaker_state(ZHIMA) == "opened"

    started = time.perf_counter()
    for _ in range(5):
        result = (await runner.screen(request_for()))[ZHIMA]
        assert result == SourceResult(SOURCE_UNAVAILABLE, error=CIRCUIT_OPEN)
    assert time.perf_counter() - started < 0.2  # fast: no call, no retry, no wait
    assert connectors[ZHIMA].calls == 3  # the source was not called
    assert calls_metric(ZHIMA, CIRCUIT_OPEN) - open_before == 5
    assert results_metric(ZHIMA, CIRCUIT_OPEN) - open_results == 5
    # other sources are not affected by zhima's breaker
    assert await runner.breaker_state(CREDIT_BUREAU) == "closed"

    connectors[ZHIMA].failure_rate = 0.0  # the source recovers
    await asyncio.sleep(0.25)  # > breaker_reset_s: the next call is let through
    assert (await runner.screen(request_for()))[ZHIMA].status == SOURCE_OK
    assert connectors[ZHIMA].calls == 4
    assert await runner.breaker_state(ZHIMA) == "closed"


@pytest.mark.asyncio
async def test_failed_half_open_trial_reopens_the_breaker() -> None:
    connectors = simulators(zhima={"failure_rate": 1.0})
    runner = make_runner(connectors, retries=0, breaker_failures=1, breaker_reset_s=0.1)
    assert (await runner.screen(request_for()))[ZHIMA].error == ERROR
    assert (await runner.screen(request_for()))[ZHIMA].error == CIRCUIT_OPEN
    await asyncio.sleep(0.15)
    assert (await runner.screen(request_for()))[ZHIMA].error == ERROR  # the trial call
    assert connectors[ZHIMA].calls == 2
    assert (await runner.screen(request_for()))[ZHIMA].error == CIRCUIT_OPEN
    assert connectors[ZHIMA].calls == 2


@pytest.mark.asyncio
async def test_breaker_opening_during_retries_stops_them() -> None:
    connectors = simulators(zhima={"failure_rate": 1.0})
    runner = make_runner(connectors, retries=4, retry_backoff_ms=1, breaker_failures=2)
    assert (await runner.screen(request_for()))[ZHIMA].error == CIRCUIT_OPEN
    assert connectors[ZHIMA].calls == 2


@pytest.mark.asyncio
async def test_open_breaker_does_not_accumulate_tracebacks() -> None:
    connectors = simulators(zhima={"failure_rate": 1.0})
    runner = make_runner({ZHIMA: connectors[ZHIMA]}, retries=0, breaker_failures=1)
    for _ in range(50):
        await runner.screen(request_for())
    from purgatory.domain.model import OpenedState

    opened = [obj for obj in gc.get_objects() if isinstance(obj, OpenedState)]
    assert opened and all(state.__traceback__ is None for state in opened)


@pytest.mark.asyncio
async def test_overall_deadline_bounds_the_screening() -> None:
    connectors = {name: SimulatedConnector(name, latency_ms=2000) for name in SOURCES}
    connectors[ZHIMA].latency_ms = 0
    runner = make_runner(connectors, deadline_ms=100, timeout_ms=5000, retries=3,
                         breaker_failures=100)
    started = time.perf_counter()
    results = await runner.screen(request_for())
    elapsed = time.perf_counter() - started
    assert 0.09 <= elapsed < 0.3  # not 2 s
    assert results[ZHIMA].status == SOURCE_OK
    for name in SOURCES:
        if name != ZHIMA:
            assert results[name] == SourceResult(SOURCE_UNAVAILABLE, error=TIMEOUT)
            assert connectors[name].calls == 1  # no time left for a retry
    await runner.aclose()


class IgnoresCancellation(Connector):
    """A badly behaved source: it swallows cancellation and answers late."""

    source = TONGDUN

    async def query(self, request: SourceRequest) -> Fields:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            await asyncio.sleep(0.5)
        return {"fraud_score": 1}


@pytest.mark.asyncio
async def test_deadline_holds_even_for_a_source_that_ignores_cancellation() -> None:
    runner = make_runner({TONGDUN: IgnoresCancellation()}, deadline_ms=50, timeout_ms=1000)
    started = time.perf_counter()
    results = await runner.screen(request_for())
    assert time.perf_counter() - started < 0.3  # not 0.55 s
    assert results == {TONGDUN: SourceResult(SOURCE_UNAVAILABLE, error=TIMEOUT)}
    await runner.aclose()


class Broken(Connector):
    def __init__(self, source: str, answer: object = None, failure: Exception | None = None):
        self.source = source
        self.answer = answer
        self.failure = failure

    async def query(self, request: SourceRequest) -> Fields:
        if self.failure is not None:
            raise self.failure
        return self.answer  # type: ignore[return-value]


@pytest.mark.asyncio
async def test_runner_never_raises() -> None:
    runner = make_runner(
        {
            CREDIT_BUREAU: Broken(CREDIT_BUREAU, failure=KeyError("boom")),
            "baihang": Broken("baihang", answer=["not", "a", "dict"]),
            "pengyuan": Broken("pengyuan", answer={"lawsuits": 1.5}),
            TONGDUN: Broken(TONGDUN, failure=TimeoutError()),
            ZHIMA: Broken(ZHIMA, answer={"score": 700}),
        },
        retries=1, retry_backoff_ms=0,
    )
    results = await runner.screen(request_for())
    assert {name: (result.status, result.error) for name, result in results.items()} == {
        CREDIT_BUREAU: (SOURCE_UNAVAILABLE, ERROR),
        "baihang": (SOURCE_UNAVAILABLE, ERROR),
        "pengyuan": (SOURCE_UNAVAILABLE, ERROR),
        TONGDUN: (SOURCE_UNAVAILABLE, TIMEOUT),
        ZHIMA: (SOURCE_OK, ""),
    }


@pytest.mark.asyncio
async def test_cancelled_caller_does_not_count_against_the_source() -> None:
    connectors = simulators(zhima={"latency_ms": 60})
    runner = make_runner(connectors, breaker_failures=1, timeout_ms=1000)
    oks = calls_metric(ZHIMA, OK)
    screening = asyncio.ensure_future(runner.screen(request_for()))
    await asyncio.sleep(0.02)
    screening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await screening
    await asyncio.sleep(0.08)  # the shielded call finishes on its own
    assert calls_metric(ZHIMA, OK) - oks == 1
    assert await runner.breaker_state(ZHIMA) == "closed"
    assert (await runner.screen(request_for()))[ZHIMA].status == SOURCE_OK


# ---- settings ---------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "override.toml"
    path.write_text(text)
    return path


def test_default_settings_build_a_simulator_runner() -> None:
    settings = load_settings(environ={})
    runner = ConnectorRunner.from_settings(settings.connectors)
    assert runner.sources == SOURCES
    results = asyncio.run(runner.screen(request_for(BAD_ID)))
    assert results[CREDIT_BUREAU].fields["bad"] is True


def test_per_source_overrides(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
[connectors]
simulator_latency_ms = 3
[connectors.sources.tongdun]
enabled = false
[connectors.sources.zhima]
simulator_latency_ms = 7
timeout_ms = 50
""")
    connectors = load_settings(config, environ={}).connectors
    assert connectors.for_source(ZHIMA)["timeout_ms"] == 50
    assert connectors.for_source(CREDIT_BUREAU)["timeout_ms"] == 1000
    runner = ConnectorRunner.from_settings(connectors)
    assert TONGDUN not in runner.sources and len(runner.sources) == len(SOURCES) - 1
    zhima = runner.connector(ZHIMA)
    bureau = runner.connector(CREDIT_BUREAU)
    assert isinstance(zhima, SimulatedConnector) and isinstance(bureau, SimulatedConnector)
    assert (zhima.latency_ms, bureau.latency_ms) == (7, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('mode = "http"', "connectors.mode"),
        ("simulator_failure_rate = 1.5", "connectors.simulator_failure_rate"),
        ("retries = 9", "connectors.retries"),
        ("breaker_failures = 0", "connectors.breaker_failures"),
        ("deadline_ms = 0", "connectors.deadline_ms"),
        ("timeout_ms = 5000", "exceeds deadline_ms"),
        ("[connectors.sources.bogus]\ntimeout_ms = 10", "unknown source"),
        ("[connectors.sources.zhima]\nretries = -1", "connectors.sources.zhima.retries"),
        ("[connectors.sources.zhima]\ntimeout_ms = 9000", "zhima's timeout_ms"),
        ("[connectors.sources.zhima]\ntimeot_ms = 9", "invalid configuration"),
    ],
)
def test_invalid_connector_settings(tmp_path: Path, text: str, message: str) -> None:
    config = write_config(tmp_path, "[connectors]\n" + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})
