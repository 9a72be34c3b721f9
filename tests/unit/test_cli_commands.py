"""The client commands `lendcore sign` and `lendcore seed`, and what every command shares:
help text on every flag, default URLs from LENDCORE_API_PORT / LENDCORE_OPS_PORT and the
configuration (as `lendcore up` serves), and connection errors naming the URL tried and the
flag that changes it. (`lendcore eod`: test_eod_cli.py.)"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
from fake_ops_api import SEEDED, TOKEN, fake_ops_api

from cluster import seed_cli, signcurl
from cluster.cli import build_parser
from cluster.cli import main as lendcore
from cluster.cli_common import api_base_url, dialled_host, ops_base_url
from cluster.config import load_settings


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and every subcommand's, depth first."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_every_flag_and_argument_has_help_text() -> None:
    parsers = [*_parsers(build_parser()), signcurl.build_parser("lendcore sign")]
    missing = [
        f"{parser.prog} {action.option_strings or action.dest}"
        for parser in parsers for action in parser._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert len(parsers) > 8
    assert missing == []


def test_default_urls_follow_the_port_variables() -> None:
    settings = load_settings(environ={"LENDCORE_API_PORT": "9180", "LENDCORE_OPS_PORT": "9181"})
    assert api_base_url(settings) == "http://127.0.0.1:9180"
    assert ops_base_url(settings) == "http://127.0.0.1:9181"
    default = load_settings(environ={})
    assert (api_base_url(default), ops_base_url(default)) == (
        "http://127.0.0.1:8080", "http://127.0.0.1:8081")


def test_default_urls_follow_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "ports.toml"
    config.write_text('[gateway]\napi_host = "0.0.0.0"\napi_port = 7080\n'
                      'ops_host = "::1"\nops_port = 7081\n')
    settings = load_settings(config, environ={})
    assert api_base_url(settings) == "http://127.0.0.1:7080"  # bound everywhere: loopback
    assert ops_base_url(settings) == "http://[::1]:7081"


def test_dialled_host() -> None:
    assert dialled_host("0.0.0.0") == dialled_host("::") == "127.0.0.1"
    assert dialled_host("10.0.0.5") == "10.0.0.5"
    assert dialled_host("::1") == "[::1]"


def test_sign_signs_for_the_gateway_of_the_port_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LENDCORE_API_PORT", "9280")
    assert lendcore(["sign", "GET", "/v1/loans/LN-1"]) == 0
    curl = capsys.readouterr().out
    assert curl.rstrip().endswith("http://127.0.0.1:9280/v1/loans/LN-1")
    assert "X-Signature" in curl
    assert lendcore(["sign", "--api-url", "http://10.0.0.9:80/", "GET", "/v1/loans/LN-1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("http://10.0.0.9:80/v1/loans/LN-1")


def test_sign_with_a_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LENDCORE_API_PORT", raising=False)  # it would win over the file
    config = tmp_path / "ports.toml"
    config.write_text("[gateway]\napi_port = 9380\n")
    assert lendcore(["sign", "--config", str(config), "GET", "/v1/loans/LN-1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("http://127.0.0.1:9380/v1/loans/LN-1")


def test_sign_exec_with_nothing_listening_names_the_url_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    monkeypatch.setenv("LENDCORE_API_PORT", str(port))
    assert lendcore(["sign", "--exec", "GET", "/v1/loans/LN-1"]) == 2
    err = capsys.readouterr().err
    assert f"lendcore sign: cannot connect to http://127.0.0.1:{port}" in err
    assert "--api-url" in err and "LENDCORE_API_PORT" in err


def test_sign_with_an_unknown_partner_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert lendcore(["sign", "--partner", "nobody", "GET", "/v1/loans/LN-1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "lendcore sign: partner 'nobody' is not configured: pass --secret")


def test_seed_finds_the_operator_api_through_the_port_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with fake_ops_api() as api:
        monkeypatch.setenv("LENDCORE_OPS_PORT", api.url.rsplit(":", 1)[1])
        assert lendcore(["seed", "--loans", "200", "--token", TOKEN]) == 0
        assert api.posts("/ops/seed") == [{"loans": 200}]
    captured = capsys.readouterr()
    assert json.loads(captured.out) == SEEDED
    assert "seeded 200 loans" in captured.err


def test_seed_with_nothing_listening_names_the_url_and_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert seed_cli.main(url, TOKEN, 10) == 1
    err = capsys.readouterr().err
    assert f"lendcore seed: cannot connect to {url}" in err
    assert "--ops-url" in err and "LENDCORE_OPS_PORT" in err


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_bench_connections_default_to_64_and_stay_in_1_to_1024(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["bench", "--quick"]).connections == 64
    assert parser.parse_args(["bench", "--connections", "256"]).connections == 256
    for bad in ("0", "1025", "many"):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", "--connections", bad])
        assert "--connections" in capsys.readouterr().err
