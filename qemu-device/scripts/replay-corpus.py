#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Replay the fuzzer's corpus on another QEMU build, for its coverage.

Usage: replay-corpus.py FUZZER QEMU CORPUS_ROOT [CONFIG...]

For each configuration with a corpus in CORPUS_ROOT/CONFIG (what make fuzz
keeps in build/fuzz/corpus), the fuzz target runs every input once with its
qtest commands logged (QTEST_LOG, FUZZ_SERIALIZE_QTEST: the way run-fuzz.sh
turns a crash into a reproducer); QEMU's reorder script makes that one qtest
trace, and QEMU (make coverage passes the gcov build) runs it with the
configuration's machine, then exits normally so that its counters are written.

A replay is close to the fuzzing, not the same: there is no machine reset
between inputs (the harness resets outside qtest; each input's own PCI setup
is in the trace), and the fuzzer's sparse memory outside guest RAM is not
there, so DMA from such addresses reads nothing the fuzzer put there; and
where an input unplugs qgpu (the hotplug configuration), the harness plugs
it in again outside the trace, so in the replay it stays unplugged for the
inputs after. What it covers is a lower bound of what the corpus covers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPLAY_TIMEOUT = 600.0
ANSWER = re.compile(rb"^(OK|FAIL|ERR)", re.MULTILINE)


def machine_args(fuzzer: Path, config: str, env: dict[str, str]) -> list[str]:
    """Return the QEMU arguments of the fuzz target's machine (it prints them)."""
    out = subprocess.run([str(fuzzer), f"--fuzz-target=generic-fuzz-{config}", "-runs=0"],
                         env={**env, "QTEST_LOG": "1"}, stdin=subprocess.DEVNULL,
                         capture_output=True, timeout=120).stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("Starting ") and " with Arguments: " in line:
            args = line.split(" with Arguments: ", 1)[1].replace(" -qtest /dev/null", "")
            return args.split()
    raise SystemExit(f"replay-corpus: {fuzzer} printed no machine for {config}")


def trace_of(fuzzer: Path, config: str, corpus: Path, reorder: Path, env: dict[str, str],
             work: Path) -> list[bytes]:
    """Return the qtest commands of every input of ``corpus``, in order."""
    raw = work / f"{config}.raw"
    with open(raw, "wb") as f:
        rc = subprocess.run([str(fuzzer), f"--fuzz-target=generic-fuzz-{config}", "-runs=0",
                             str(corpus)],
                            env={**env, "QTEST_LOG": "1", "FUZZ_SERIALIZE_QTEST": "1"},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                            timeout=1800, check=False).returncode
    if rc != 0:
        # An input that crashes the fuzz target cuts the trace short: say so.
        tail = raw.read_bytes().decode(errors="replace").splitlines()[-25:]
        raise SystemExit(f"replay-corpus: {fuzzer} failed (exit {rc}) running the corpus "
                         f"of {config}; the end of its log:\n" + "\n".join(tail))
    trace = subprocess.run([sys.executable, str(reorder), str(raw)], capture_output=True,
                           timeout=600, check=True).stdout
    raw.unlink()
    return [line for line in trace.splitlines() if line.strip()]


def replay(qemu: Path, args: list[str], commands: list[bytes], work: Path) -> int:
    """Run ``commands`` in QEMU over qtest; return how many it answered."""
    answers = work / "answers"
    with open(answers, "wb") as out:
        proc = subprocess.Popen([str(qemu), *args, "-qtest", "stdio"], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.DEVNULL)
        assert proc.stdin is not None
        stdin = proc.stdin

        def feed() -> None:
            # In a thread: a QEMU that stalls mid-trace must not block us.
            with contextlib.suppress(BrokenPipeError, OSError):
                stdin.write(b"\n".join(commands) + b"\n")
                stdin.flush()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        deadline = time.monotonic() + REPLAY_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if len(ANSWER.findall(answers.read_bytes())) >= len(commands):
                break
            time.sleep(0.2)
        # SIGTERM: QEMU exits normally and writes its coverage counters.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return len(ANSWER.findall(answers.read_bytes()))


def main(argv: list[str]) -> int:
    """Replay each configuration's corpus; print what ran."""
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    fuzzer, qemu, root = Path(argv[0]), Path(argv[1]), Path(argv[2])
    configs = argv[3:]
    if not configs and root.is_dir():
        configs = sorted(p.name for p in root.iterdir() if p.is_dir())
    reorder = Path(os.environ.get("QEMU_SRC", "")) / "scripts/oss-fuzz" \
        / "reorder_fuzzer_qtest_trace.py"
    if not fuzzer.exists() or not reorder.exists():
        print(f"replay-corpus: needs the fuzz target ({fuzzer}) and QEMU's source "
              f"(QEMU_SRC, for {reorder.name}): make qemu-fuzz", file=sys.stderr)
        return 1
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    status = 0
    for config in configs:
        corpus = root / config
        inputs = sum(1 for p in corpus.iterdir() if p.is_file()) if corpus.is_dir() else 0
        if not inputs:
            print(f"replay-corpus: {config}: no corpus in {corpus} (make fuzz makes one)")
            continue
        with tempfile.TemporaryDirectory(prefix="qgpu-replay-") as tmp:
            args = machine_args(fuzzer, config, env)
            commands = trace_of(fuzzer, config, corpus, reorder, env, Path(tmp))
            answered = replay(qemu, args, commands, Path(tmp))
        print(f"replay-corpus: {config}: {inputs} inputs, {len(commands)} qtest commands, "
              f"{answered} answered")
        if answered < len(commands):
            print(f"replay-corpus: {config}: QEMU answered {answered} of {len(commands)} "
                  "commands (it ended or stalled early)", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
