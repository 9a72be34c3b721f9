"""The `lendcore` command."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sign"]:
        # `sign` has its own options (--exec, --partner ...): hand them over untouched.
        from cluster.signcurl import main as sign_main

        return sign_main(argv[1:])
    parser = argparse.ArgumentParser(prog="lendcore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the whole system")
    up.add_argument("--config", type=Path, help="a TOML file layered over config/default.toml")
    sign = commands.add_parser(
        "sign", help="print (or --exec) a signed partner request; see `lendcore sign -h`",
        add_help=False,
    )
    sign.add_argument("sign_args", nargs="*")
    test = commands.add_parser("test", help="ruff, mypy, bandit and the whole pytest suite")
    test.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    bench = commands.add_parser("bench", help="measure the running stack (see loadtests/)")
    bench.add_argument("--quick", action="store_true", help="a short run, under a minute")
    bench.add_argument("--config", type=Path)
    bench.add_argument("--loans", type=int, default=None, help="loans to seed")
    bench.add_argument("--duration", type=float, default=None, help="seconds per phase")
    bench.add_argument("--eod", type=int, default=None, metavar="N",
                       help="instead of the load phases: seed N loans, time one end of day")
    rules = commands.add_parser("rules", help="risk rules: `lendcore rules check [--dir DIR]`")
    rules_commands = rules.add_subparsers(dest="rules_command", required=True)
    rules_check = rules_commands.add_parser(
        "check", help="validate config/risk (rule sets, scorecard, pricing); path:line errors"
    )
    rules_check.add_argument("--dir", type=Path, default=None,
                             help="risk config directory (default: paths.risk_dir)")
    eod = commands.add_parser(
        "eod", help="run end of day through the operator API, with a progress bar")
    eod.add_argument("--ops-url", default="http://127.0.0.1:8081")
    eod.add_argument("--token", default=None,
                     help="an admin token (default: $LENDCORE_OPS_TOKEN, else the dev admin)")
    eod.add_argument("--business-date", default=None,
                     help="YYYY-MM-DD: a closed date prints its stored report")
    seed = commands.add_parser(
        "seed", help="bulk-create N active loans of partner demo through the operator API")
    seed.add_argument("--loans", type=int, required=True)
    seed.add_argument("--ops-url", default="http://127.0.0.1:8081")
    seed.add_argument("--token", default=None,
                      help="an admin token (default: $LENDCORE_OPS_TOKEN, else the dev admin)")
    args = parser.parse_args(argv)
    if args.command == "up":
        from cluster.up import run

        return run(args.config)
    if args.command == "test":
        return run_tests(args.pytest_args)
    if args.command == "bench":
        if args.eod is not None:
            from loadtests.bench import run_eod_bench

            return run_eod_bench(args.config, args.eod)
        from loadtests.bench import run_bench

        return run_bench(args.config, quick=args.quick, loans=args.loans, duration=args.duration)
    if args.command == "eod":
        from cluster.eod_cli import main as eod_main

        return eod_main(args.ops_url, args.token, args.business_date)
    if args.command == "seed":
        from cluster.seed_cli import main as seed_main

        return seed_main(args.ops_url, args.token, args.loans)
    if args.command == "rules":
        from cluster.rules_cli import run as run_rules

        return run_rules(args)
    parser.error(f"unknown command {args.command}")
    return 2


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
