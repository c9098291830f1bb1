"""qemu-device/scripts/run-fuzz.sh: how its time is split, with a stand-in fuzzer.

``make test`` asks for ``FUZZ_BUDGET=fuzzer``: the same fuzzing of each
configuration whether one fuzzer runs at a time (beside the other CI lane) or
one per core (once that lane is done, ``FUZZ_MORE_JOBS``). The stand-ins
record the ``-max_total_time`` each configuration got, or when each ran, and
print libFuzzer's final stats.
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


def run_fuzz(tmp_path: Path, seconds: int, jobs: int, budget: str | None, *,
             fuzzer_text: str = FAKE_FUZZER, more_jobs: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    fuzzer = tmp_path / "qemu-fuzz-x86_64"
    fuzzer.write_text(fuzzer_text)
    fuzzer.chmod(0o755)
    (tmp_path / "seeds").mkdir(exist_ok=True)
    env = dict(os.environ, FUZZ_JOBS=str(jobs), FAKE_FUZZ_LOG=str(tmp_path / "times"))
    env.pop("FUZZ_BUDGET", None)
    env.pop("FUZZ_MORE_JOBS", None)
    if budget is not None:
        env["FUZZ_BUDGET"] = budget
    if more_jobs is not None:
        env["FUZZ_MORE_JOBS"] = more_jobs
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
    assert f"28 executions in all (up to {jobs} at once)" in done.stdout


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


#: A fuzzer that takes its time: the first configuration 4 s (and, if the
#: environment names one, creates FLAG as it starts: the other lane ended), the
#: others 0.3 s; it logs when each ran. (The leak check, without
#: -max_total_time, is instant.)
SLOW_FUZZER = """#!/bin/sh
target=${1#--fuzz-target=generic-fuzz-}
case "$*" in *-max_total_time=*)
    echo "start $target $(date +%s.%N)" >> "$FAKE_FUZZ_LOG.spans"
    if [ "$target" = qgpu ]; then
        [ -n "$FLAG" ] && touch "$FLAG"
        sleep 4
    else
        sleep 0.3
    fi
    echo "end $target $(date +%s.%N)" >> "$FAKE_FUZZ_LOG.spans";;
esac
echo "stat::number_of_executed_units: 7"
echo "stat::average_exec_per_sec: 1"
"""


def most_at_once(tmp_path: Path) -> int:
    """How many stand-in fuzzers ran at the same time, at most."""
    events = sorted((float(t), 1 if what == "start" else -1)
                    for what, _, t in (line.split() for line in
                                       (tmp_path / "times.spans").read_text().splitlines()))
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


@pytest.mark.parametrize("other_lane_ends", [True, False])
def test_more_fuzzers_run_once_the_file_saying_so_appears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_lane_ends: bool) -> None:
    """``make test``: one fuzzer beside the other lane, two once it has ended."""
    flag = tmp_path / "other-lane.rc"
    monkeypatch.setenv("FLAG", str(flag) if other_lane_ends else "")
    done = run_fuzz(tmp_path, 240, 1, "fuzzer", fuzzer_text=SLOW_FUZZER,
                    more_jobs=f"{flag}:2")
    assert done.returncode == 0, done.stderr
    assert most_at_once(tmp_path) == (2 if other_lane_ends else 1)
    assert f"(up to {2 if other_lane_ends else 1} at once)" in done.stdout


@pytest.mark.parametrize(("more", "budget", "message"), [
    ("2", "fuzzer", "FUZZ_MORE_JOBS must be FILE:JOBS, not '2'"),
    ("/tmp/x:many", "fuzzer", "FUZZ_MORE_JOBS must be FILE:JOBS, not '/tmp/x:many'"),
    ("/tmp/x:2", None, "FUZZ_MORE_JOBS needs FUZZ_BUDGET=fuzzer"),
    ("/tmp/x:0", "fuzzer", "FUZZ_MORE_JOBS must be FILE:JOBS, not '/tmp/x:0'"),
])
def test_more_jobs_are_refused_unless_well_formed_with_a_fuzzer_budget(
        tmp_path: Path, more: str, budget: str | None, message: str) -> None:
    done = run_fuzz(tmp_path, 240, 1, budget, more_jobs=more)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "times").exists()


def test_more_jobs_must_be_more(tmp_path: Path) -> None:
    done = run_fuzz(tmp_path, 240, 3, "fuzzer", more_jobs=f"{tmp_path}/x:1")
    assert done.returncode == 2, done.stderr
    assert "FUZZ_MORE_JOBS's count (1) is fewer than FUZZ_JOBS (3)" in done.stderr
