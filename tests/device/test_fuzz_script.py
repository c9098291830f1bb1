"""qemu-device/scripts/run-fuzz.sh: how its time is split, with a stand-in fuzzer.

``make test`` asks for ``FUZZ_BUDGET=fuzzer``: the same fuzzing of each
configuration whether one fuzzer runs at a time (beside the other CI lane) or
one per core (once that lane is done). The stand-in records the
``-max_total_time`` each configuration got and prints libFuzzer's final stats.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from qgpu import paths

SCRIPT = paths.repo_root() / "qemu-device" / "scripts" / "run-fuzz.sh"
CONFIGS = ["qgpu", "qgpu-intel-iommu", "qgpu-msix-off", "qgpu-native-hotplug"]

FAKE_FUZZER = """#!/bin/sh
# --fuzz-target=generic-fuzz-CONFIG ... -max_total_time=N (absent in the leak check)
target=${1#--fuzz-target=generic-fuzz-}
for arg; do
    case $arg in -max_total_time=*) echo "$target ${arg#*=}" >> "$FAKE_FUZZ_LOG";; esac
done
echo "stat::number_of_executed_units: 7"
echo "stat::average_exec_per_sec: 1"
"""


def run_fuzz(tmp_path: Path, seconds: int, jobs: int, budget: str | None
             ) -> subprocess.CompletedProcess[str]:
    fuzzer = tmp_path / "qemu-fuzz-x86_64"
    fuzzer.write_text(FAKE_FUZZER)
    fuzzer.chmod(0o755)
    (tmp_path / "seeds").mkdir(exist_ok=True)
    env = dict(os.environ, FUZZ_JOBS=str(jobs), FAKE_FUZZ_LOG=str(tmp_path / "times"))
    env.pop("FUZZ_BUDGET", None)
    if budget is not None:
        env["FUZZ_BUDGET"] = budget
    return subprocess.run(["bash", str(SCRIPT), str(fuzzer), str(seconds),
                           str(tmp_path / "out"), str(tmp_path / "seeds"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def times(tmp_path: Path) -> dict[str, int]:
    lines = (tmp_path / "times").read_text().split("\n")
    return {cfg: int(t) for cfg, t in (line.split() for line in lines if line)}


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_a_fuzzer_budget_gives_each_configuration_the_same_time_however_many_run_at_once(
        tmp_path: Path, jobs: int) -> None:
    done = run_fuzz(tmp_path, 240, jobs, "fuzzer")
    assert done.returncode == 0, done.stderr
    assert times(tmp_path) == {cfg: 60 for cfg in CONFIGS}
    assert f"28 executions in all ({jobs} at once)" in done.stdout


@pytest.mark.parametrize(("jobs", "each"), [(1, 60), (2, 120), (4, 240)])
def test_a_wall_clock_budget_is_shared_by_the_rounds_of_jobs(
        tmp_path: Path, jobs: int, each: int) -> None:
    done = run_fuzz(tmp_path, 240, jobs, None)
    assert done.returncode == 0, done.stderr
    assert times(tmp_path) == {cfg: each for cfg in CONFIGS}


def test_an_unknown_budget_is_refused_with_the_choices(tmp_path: Path) -> None:
    done = run_fuzz(tmp_path, 240, 2, "cpu")
    assert done.returncode == 2
    assert "FUZZ_BUDGET must be wall or fuzzer, not 'cpu'" in done.stderr
    assert not (tmp_path / "times").exists()
