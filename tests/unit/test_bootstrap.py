"""cluster/bootstrap.py drops Ray's "token authentication is enabled" warning, which Ray
logs at every start of a local cluster, and no other record (tests/integration/test_up.py
checks a real `lendcore up`'s log)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from ray._private.authentication import authentication_token_setup as ray_token_setup

from cluster.bootstrap import RAY_AUTH_SETUP_LOGGER, DropTokenAuthEnabledWarning


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def ray_token_log() -> Iterator[Recorder]:
    """What Ray's token set-up module logs, filtered as `lendcore up` filters it."""
    logger = logging.getLogger(RAY_AUTH_SETUP_LOGGER)
    assert ray_token_setup.logger is logger, "Ray logs its token warnings elsewhere now"
    recorder = Recorder()
    drop = DropTokenAuthEnabledWarning()
    logger.addHandler(recorder)
    logger.addFilter(drop)
    try:
        yield recorder
    finally:
        logger.removeFilter(drop)
        logger.removeHandler(recorder)


def test_rays_token_enabled_warning_is_dropped(ray_token_log: Recorder) -> None:
    ray_token_setup._warn_token_auth_enabled()  # what ray.init logs for a new local cluster
    assert ray_token_log.messages == []


def test_other_records_pass(ray_token_log: Recorder) -> None:
    ray_token_setup._warn_token_auth_disabled()  # the opposite warning must stay visible
    logging.getLogger(RAY_AUTH_SETUP_LOGGER).error("token file unreadable")
    assert len(ray_token_log.messages) == 2
    assert ray_token_log.messages[0].startswith("Token authentication is disabled")
    assert ray_token_log.messages[1] == "token file unreadable"
