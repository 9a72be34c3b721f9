"""The `lendcore` command."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

CONFIG_HELP = "a TOML file layered over config/default.toml (as for `lendcore up --config`)"
ADMIN_BEARER_HELP = ("an admin operator's bearer token (default: $LENDCORE_OPS_TOKEN, else the "
              "configuration's first admin: the dev admin)")
OPS_URL_HELP = ("the operator API (default: http://127.0.0.1:<ops_port>, the port from "
                "LENDCORE_OPS_PORT or the configuration, as `lendcore up` serves it)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sign"]:
        # `sign` has its own options (--exec, --partner ...): hand them over untouched.
        from cluster.signcurl import main as sign_main

        return sign_main(argv[1:], prog="lendcore sign")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "up":
        from cluster.up import run

        return run(args.config, args.nodes)
    if args.command == "gateway":
        from cluster.gateway_process import run_gateway

        return run_gateway(args.config, args.namespace)
    if args.command == "test":
        return run_tests(args.pytest_args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "eod":
        from cluster.eod_cli import EodOptions
        from cluster.eod_cli import main as eod_main

        return eod_main(EodOptions(
            ops_url=args.ops_url, token=args.token, business_date=args.business_date,
            config_file=args.config, assume_yes=args.yes, as_json=args.json,
        ))
    if args.command == "seed":
        from cluster.seed_cli import main as seed_main

        return seed_main(args.ops_url, args.token, args.loans, args.config)
    if args.command == "rules":
        from cluster.rules_cli import run as run_rules

        return run_rules(args)
    parser.error(f"unknown command {args.command}")
    return 2


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag of `lendcore` (`sign` parses its own: cluster/signcurl.py)."""
    parser = argparse.ArgumentParser(prog="lendcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole system")
    up.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    up.add_argument("--nodes", type=int, default=None, metavar="N",
                    help="start a local Ray cluster of N nodes on this machine (head + N-1 "
                         "workers; default [cluster] local_nodes, LENDCORE_LOCAL_NODES)")
    gateway = commands.add_parser(
        "gateway", help="one more partner-API process for a running system (joins its Ray "
                        "cluster; needs LENDCORE_RAY_ADDRESS, LENDCORE_PG_DSN, LENDCORE_REDIS_URL)")
    gateway.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    gateway.add_argument("--namespace", default="lendcore", metavar="NS",
                         help="the Ray namespace of the system (default lendcore)")
    sign = commands.add_parser(
        "sign", help="print (or --exec) a signed partner request; see `lendcore sign -h`",
        add_help=False,
    )
    sign.add_argument("sign_args", nargs="*", help="see `lendcore sign -h`")
    test = commands.add_parser("test", help="ruff, mypy, bandit and the whole pytest suite")
    test.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    _add_bench(commands)
    _add_rules(commands)
    _add_eod(commands)
    _add_seed(commands)
    return parser


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser("bench", help="measure the running stack (see loadtests/)")
    bench.add_argument("--quick", action="store_true", help="a short run, under a minute")
    bench.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    bench.add_argument("--loans", type=int, default=None, help="loans to seed")
    bench.add_argument("--duration", type=float, default=None, help="seconds per phase")
    bench.add_argument("--product", default="CASH_EI_12", metavar="CODE",
                       help="the product the bench applies for, books and repays "
                            "(default CASH_EI_12; JOINT_EI_12 shows what a joint split costs)")
    bench.add_argument("--nodes", type=int, default=None, metavar="N",
                       help="start the system with a local Ray cluster of N nodes")
    bench.add_argument("--gateways", type=int, default=None, metavar="K",
                       help="start the system with K gateway processes on the partner port")
    bench.add_argument("--connections", type=_connections, default=64, metavar="N",
                       help="client connections of the baseline, single-repayment and "
                            "application phases (default 64; 1..1024)")
    bench.add_argument("--eod", type=int, default=None, metavar="N",
                       help="instead of the load phases: seed N loans, time one end of day")


def _add_rules(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = commands.add_parser("rules", help="risk rules: `lendcore rules check [--dir DIR]`")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    rules_check = rules_commands.add_parser(
        "check", help="validate config/risk (rule sets, scorecard, pricing); path:line errors"
    )
    rules_check.add_argument("--dir", type=Path, default=None,
                             help="risk config directory (default: paths.risk_dir)")


def _add_eod(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    eod = commands.add_parser(
        "eod", help="run end of day through the operator API, with a progress bar")
    eod.add_argument("--ops-url", default=None, metavar="URL", help=OPS_URL_HELP)
    eod.add_argument("--token", default=None, help=ADMIN_BEARER_HELP)
    eod.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)
    eod.add_argument("--business-date", default=None, metavar="YYYY-MM-DD",
                     help="the current date runs it; a closed date prints its stored report")
    eod.add_argument("-y", "--yes", action="store_true",
                     help="do not ask for confirmation (only asked on a terminal)")
    eod.add_argument("--json", action="store_true",
                     help="print the whole report as JSON instead of a short summary")


def _add_seed(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    seed = commands.add_parser(
        "seed", help="bulk-create N active loans of partner demo through the operator API")
    seed.add_argument("--loans", type=int, required=True, metavar="N",
                      help="how many loans (1..10,000,000); about 5 %% are created overdue")
    seed.add_argument("--ops-url", default=None, metavar="URL", help=OPS_URL_HELP)
    seed.add_argument("--token", default=None, help=ADMIN_BEARER_HELP)
    seed.add_argument("--config", type=Path, default=None, metavar="FILE", help=CONFIG_HELP)


def _connections(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError("must be in 1..1024")
    return value


def _bench(args: argparse.Namespace) -> int:
    if args.eod is not None:
        from loadtests.bench import run_eod_bench

        return run_eod_bench(args.config, args.eod)
    from loadtests.bench import run_bench

    return run_bench(args.config, quick=args.quick, loans=args.loans, duration=args.duration,
                     product=args.product, nodes=args.nodes, gateways=args.gateways,
                     connections=args.connections)


# bandit over the code that runs the service (tests and load generators excluded: their
# dev secrets and random draws are theirs). Every finding is fixed, or marked on its line
# with a nosec comment naming the test and why; B101 (assert_used) is skipped as a whole:
# our asserts state invariants and narrow types for mypy, none checks input or access
# (those raise HttpError), and the service never runs under -O.
BANDIT_ARGS = ("-q", "-r", "lending", "actors", "storage", "gateway", "cluster",
               "--skip", "B101")


def run_tests(pytest_args: list[str]) -> int:
    """Lint, type-check, security scan, then pytest: the README's test command.

    The integration tests need a Postgres and a Redis. They use LENDCORE_TEST_PG_DSN /
    LENDCORE_TEST_REDIS_URL when set, else the usual local ports when something listens
    there, else (a machine with only Python, or LENDCORE_TEST_EMBEDDED=1) embedded ones
    started for this run in a temporary directory.
    """
    import os
    import subprocess  # nosec B404  # runs our own tools (below), never a shell
    import tempfile
    from contextlib import ExitStack
    from pathlib import Path

    steps = [
        [sys.executable, "-m", "ruff", "check", "."],
        [sys.executable, "-m", "mypy"],
        [sys.executable, "-m", "bandit", *BANDIT_ARGS],
        [sys.executable, "-m", "pytest", "-q", *pytest_args],
    ]
    with ExitStack() as stack:
        env = dict(os.environ)
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lc-test-")))
        env.update(_test_services(stack, workdir, env))
        for step in steps:
            print("+", " ".join(step[2:]), flush=True)
            # Fixed tools, no shell; the pytest args are the caller's own command line.
            code = subprocess.call(step, env=env)  # nosec B603
            if code != 0:
                return code
    return 0


def _test_services(stack: ExitStack, workdir: Path, env: dict[str, str]) -> dict[str, str]:
    from cluster.services import start_embedded_postgres, start_embedded_redis

    forced = env.get("LENDCORE_TEST_EMBEDDED") == "1"
    chosen: dict[str, str] = {}
    if "LENDCORE_TEST_PG_DSN" not in env and (forced or not _listening(5432)):
        service = stack.enter_context(start_embedded_postgres(workdir, "lendcore_admin"))
        chosen["LENDCORE_TEST_PG_DSN"] = service.url
        print(f"tests use an embedded Postgres: {service.url}", flush=True)
    if "LENDCORE_TEST_REDIS_URL" not in env and (forced or not _listening(6379)):
        service = stack.enter_context(start_embedded_redis(workdir))
        chosen["LENDCORE_TEST_REDIS_URL"] = service.url
        print(f"tests use an embedded Redis: {service.url}", flush=True)
    return chosen


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    sys.exit(main())
