"""Fixtures of the reliability tests: the integration suite's running system, plus faults.

The integration conftest (tests/integration/conftest.py) builds a whole system on a fresh
database; it is loaded here under its own module name, `integration_system`, because a
second module called `conftest` would shadow it (pytest imports every conftest.py as
`conftest`). Import what a test needs from `integration_system`, `factories` and `faults`.
"""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

_INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
_HERE = Path(__file__).resolve().parent
for _path in (_INTEGRATION, _HERE):  # factories, conftest_redis; faults
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def _load_integration_system() -> object:
    name = "integration_system"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _INTEGRATION / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_load_integration_system()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray for the session; the integration suite's, when it already started one
    (both run in one pytest session and Ray allows one `init` per process)."""
    if ray.is_initialized():
        yield
        return
    ray.init(
        address="local",  # a Ray of the run's own, never one found running on the machine
        num_cpus=2, object_store_memory=96 * 1024 * 1024, include_dashboard=False,
        namespace=f"lendcore-test-{uuid.uuid4().hex[:8]}", log_to_driver=False,
    )
    yield
    ray.shutdown()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault tests' figures (faults.FAULT_LINES), in every run's output."""
    from faults import FAULT_LINES

    if FAULT_LINES:
        terminalreporter.section("faults: figures of each fault test")
        for line in FAULT_LINES:
            terminalreporter.write_line(line)
