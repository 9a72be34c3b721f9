"""The `lendcore` command."""

from __future__ import annotations

import argparse
import sys
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
    test = commands.add_parser("test", help="ruff, mypy and the whole pytest suite")
    test.add_argument("pytest_args", nargs="*", help="extra arguments for pytest")
    bench = commands.add_parser("bench", help="measure the running stack (see loadtests/)")
    bench.add_argument("--quick", action="store_true", help="a short run, under a minute")
    bench.add_argument("--config", type=Path)
    bench.add_argument("--loans", type=int, default=None, help="loans to seed")
    bench.add_argument("--duration", type=float, default=None, help="seconds per phase")
    args = parser.parse_args(argv)
    if args.command == "up":
        from cluster.up import run

        return run(args.config)
    if args.command == "test":
        return run_tests(args.pytest_args)
    if args.command == "bench":
        from loadtests.bench import run_bench

        return run_bench(args.config, quick=args.quick, loans=args.loans, duration=args.duration)
    parser.error(f"unknown command {args.command}")
    return 2


def run_tests(pytest_args: list[str]) -> int:
    """Lint, type-check, then pytest: the README's test command."""
    import subprocess

    steps = [
        [sys.executable, "-m", "ruff", "check", "."],
        [sys.executable, "-m", "mypy"],
        [sys.executable, "-m", "pytest", "-q", *pytest_args],
    ]
    for step in steps:
        print("+", " ".join(step[2:]), flush=True)
        code = subprocess.call(step)
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
