"""[gateway] call_fill_ms and host_transport: their defaults, and values outside their ranges
refused at start-up."""

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


def test_partner_commands_go_over_the_data_ports_by_default() -> None:
    assert load_settings(environ={}).gateway.host_transport == "socket"


def test_the_transport_can_be_ray_by_file_or_by_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[gateway]\nhost_transport = "ray"\n')
    assert load_settings(config, environ={}).gateway.host_transport == "ray"
    by_variable = load_settings(environ={"LENDCORE_HOST_TRANSPORT": "ray"})
    assert by_variable.gateway.host_transport == "ray"


@pytest.mark.parametrize("value", ["grpc", "", "Socket"])
def test_an_unknown_transport_is_a_start_up_error(tmp_path: Path, value: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[gateway]\nhost_transport = "{value}"\n')
    with pytest.raises(ConfigError, match="host_transport"):
        load_settings(config, environ={})
