"""[gateway] call_fill_ms: its default, and values outside 0..100 refused at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import ConfigError, load_settings


def test_the_default_fill_is_20_ms() -> None:
    assert load_settings(environ={}).gateway.call_fill_ms == 20.0


@pytest.mark.parametrize("value", ["-1", "100.5", "1000"])
def test_a_fill_outside_0_to_100_ms_is_a_start_up_error(tmp_path: Path, value: str) -> None:
    config = tmp_path / "fill.toml"
    config.write_text(f"[gateway]\ncall_fill_ms = {value}\n")
    with pytest.raises(ConfigError, match="call_fill_ms"):
        load_settings(config, environ={})


@pytest.mark.parametrize("value", ["0", "5", "100"])
def test_a_fill_from_0_to_100_ms_is_taken(tmp_path: Path, value: str) -> None:
    config = tmp_path / "fill.toml"
    config.write_text(f"[gateway]\ncall_fill_ms = {value}\n")
    assert load_settings(config, environ={}).gateway.call_fill_ms == float(value)
