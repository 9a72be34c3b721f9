"""The `./lendcore` bootstrap wrapper on a first run: it reports the installation's progress
on stderr (pip's own lines, not --quiet), keeps stdout for the command, and installs only
once. A stand-in `python3` makes the virtual environment with a stand-in pip and CLI, so
nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cluster.config import PROJECT_ROOT

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3: `-m venv DIR` makes a venv whose pip logs its arguments and prints
# a line of progress, and whose `lendcore` says what it was asked to run.
set -euo pipefail
[ "$1 $2" = "-m venv" ] || exit 64
mkdir -p "$3/bin"
cat > "$3/bin/python" <<'EOS'
#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../pip-calls"
echo "Collecting something (pip progress)"
EOS
cat > "$3/bin/lendcore" <<'EOS'
#!/usr/bin/env bash
echo "lendcore ran: $*"
EOS
chmod +x "$3/bin/python" "$3/bin/lendcore"
"""


def _run_wrapper(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "LENDCORE_VENV": str(tmp_path / "venv")}
    return subprocess.run(
        [str(PROJECT_ROOT / "lendcore"), "up", "--config", "x.toml"], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_first_run_shows_install_progress_on_stderr_only(tmp_path: Path) -> None:
    first = _run_wrapper(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "lendcore ran: up --config x.toml\n"
    assert "first run: creating a virtual environment" in first.stderr
    assert "step 1/2: upgrading pip" in first.stderr
    assert "step 2/2: installing lendcore[dev]" in first.stderr
    assert first.stderr.count("Collecting something (pip progress)") == 2
    assert "dependencies installed in" in first.stderr
    pip_calls = (tmp_path / "venv" / "pip-calls").read_text().splitlines()
    assert len(pip_calls) == 2
    assert all("--quiet" not in call and call.startswith("-m pip install") for call in pip_calls)

    again = _run_wrapper(tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "lendcore ran: up --config x.toml\n"
    assert again.stderr == "", "installed once: nothing to report on the next run"
