"""`lendcore up`'s `ready in N s` counts from the start of the process (cluster/up.py),
read from the kernel's record of it; psutil's reading of the same record agrees to within
its one-second boot-time rounding."""

from __future__ import annotations

import re
import time

import psutil

from cluster.up import StartupPhases, seconds_since_process_start


def test_seconds_since_process_start_is_this_process_age() -> None:
    by_psutil = time.time() - psutil.Process().create_time()
    ours = seconds_since_process_start()
    assert ours > 0
    assert abs(ours - by_psutil) < 1.5, (ours, by_psutil)


def test_ready_line_counts_every_phase_from_the_process_start() -> None:
    phases = StartupPhases()
    time.sleep(0.2)
    phases.done("ray")
    line = phases.ready_line()
    total = float(line.split()[2])
    assert line.startswith(f"ready in {total:.1f} s from the command's start (process start to")
    ray = re.search(r", ray (\d+\.\d) s\)$", line)
    assert ray is not None and float(ray.group(1)) >= 0.2, line
    assert total >= seconds_since_process_start() - 0.2 >= 0.2
