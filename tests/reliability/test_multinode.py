"""Issue 15 on a local Ray cluster of three nodes: moves to other nodes, a node drained, a
node's raylet killed (its shards re-homed within 10 s), a node added (shards evened out),
under steady signed repayments with 0 lost or doubled. The scenario runs in a process of
its own (tests/reliability/multinode_scenario.py: one Ray driver a process, and this
session's is a one-node Ray); its figures are printed with the fault tests'."""

from __future__ import annotations

import json
import os
import subprocess  # nosec B404 - runs our own scenario script with this interpreter
import sys
from pathlib import Path

import pytest
from faults import FAULT_LINES

pytestmark = pytest.mark.slow

SCENARIO = Path(__file__).resolve().parent / "multinode_scenario.py"
TIMEOUT_S = 600


def test_three_nodes_moves_drain_raylet_killed_node_added() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SCENARIO.parents[2]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(  # nosec B603 - fixed argv, no shell
        [sys.executable, str(SCENARIO)], env=env, capture_output=True, text=True,
        timeout=TIMEOUT_S, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MULTINODE ")]
    assert done.returncode == 0 and lines, done.stderr[-5000:]
    figures = json.loads(lines[-1].removeprefix("MULTINODE "))
    assert figures["lost"] == 0 and figures["doubled"] == 0, figures
    assert figures["rehome_s"] <= 10.0, figures
    assert figures["move_pause_p99_s"] <= 1.0, figures
    line = "MULTINODE 3 local nodes: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    FAULT_LINES.append(line)
