#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Drive the qgpu test guest over its serial console (stdlib only).

  guestctl.py smoke [--modes direct swiotlb iommu virtio-iommu]   boot checks, PASS/FAIL per mode
  guestctl.py bench [-n 5] [--mode direct]           boot-to-ready-shell times

Both start images/run-guest.sh (interactive mode, console on a pipe) and use
the console protocol of the image in its "plain" style (qgpu_console=plain,
which run-guest.sh picks when stdin is not a terminal: no echo, prompt
"qgpu# " on a line of its own): wait for the line QGPU-GUEST-READY, then
send `CMD; echo "QGPU-RC-<n>=$?"` and read lines up to `QGPU-RC-<n>=<status>`.
`exit` leaves the shell and powers the guest off.
"""
from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = HERE.parent
OUT = Path(os.environ.get("OUT", TOP / "build" / "images" / "stock"))
READY = "QGPU-GUEST-READY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    def __init__(self, mode: str, timeout: float, log_path: Path | None = None,
                 extra: list[str] | None = None) -> None:
        self.mode = mode
        self.port = free_port()
        (OUT / "run").mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"guest-{mode}.", dir=OUT / "run"))
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.seq = 0
        self.closed = False
        args = [str(HERE / "run-guest.sh"), "--mode", mode, "--ssh-port", str(self.port),
                "--run-dir", str(self.run_dir), "--timeout", str(int(timeout))] + (extra or [])
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout
        logf = open(self.log_path, "w") if self.log_path else None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            now = time.monotonic()
            if logf:
                logf.write(f"{now - self.t0:8.3f} {line}\n")
                logf.flush()
            with self.cond:
                self.lines.append((now, line))
                self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if logf:
            logf.close()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> tuple[int, re.Match[str], float]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i][1])
                    if m:
                        return i, m, self.lines[i][0]
                    i += 1
                left = deadline - time.monotonic()
                if self.closed:
                    raise RuntimeError(f"guest output ended before /{pattern}/")
                if left <= 0:
                    raise TimeoutError(f"no /{pattern}/ within {timeout:.0f}s")
                self.cond.wait(left)

    def send(self, text: str) -> None:
        assert self.proc.stdin
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, cmd: str, timeout: float = 60) -> tuple[int, list[str]]:
        self.seq += 1
        tag = f"QGPU-RC-{self.seq}"
        with self.cond:
            start = len(self.lines)
        self.send(f'{cmd}; echo "{tag}=$?"\n')
        i, m, _ = self.wait_for(rf"^{tag}=(\d+)$", timeout, start)
        with self.cond:
            out = [line for _, line in self.lines[start:i] if line != "qgpu# "]
        return int(m.group(1)), out

    def ssh(self, cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        key = OUT / "ssh" / "id_ed25519"
        return subprocess.run(
            ["ssh", "-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30",
             "-p", str(self.port), "root@127.0.0.1", cmd],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def poweroff(self, timeout: float = 60) -> int:
        """Leave the console shell (the guest powers off); QEMU's exit status."""
        try:
            self.send("exit\n")
            self.proc.stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            pass
        return self.proc.wait(timeout)

    def text(self) -> str:
        with self.cond:
            return "\n".join(line for _, line in self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # run-guest.sh kills QEMU in its trap
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.reader.join(5)
        subprocess.run(["rm", "-rf", str(self.run_dir)], check=False)


def smoke(args: argparse.Namespace) -> int:
    driver_packed = (OUT / "initramfs.root" / "opt" / "qgpu" / "qgpu.ko").exists()
    results: dict[str, bool] = {}
    logdir = OUT / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for mode in args.modes:
        log = logdir / f"boot-smoke-{mode}.log"
        fails: list[str] = []
        notes: list[str] = []
        g = Guest(mode, args.timeout, log)
        try:
            _, _, t_ready = g.wait_for(READY, args.timeout)
            notes.append(f"ready {t_ready - g.t0:.2f}s")
            g.wait_for(r"^qgpu# $", 30)
            text = g.text()
            if driver_packed:
                m = re.search(r"qgpu-init: insmod qgpu\.ko[^\n]*", text)
                if not (m and m.group(0).endswith(": OK")):
                    fails.append("qgpu.ko did not load at boot: " + (m.group(0) if m else "no insmod line"))
            elif "no driver packed" not in text:
                fails.append("no driver packed, but the boot log does not say so")
            rc, out = g.run("qgpu-boot-check", 60)
            for line in out:
                if line.startswith("check: FAIL"):
                    fails.append(line[7:])
            if rc != 0:
                fails.append(f"qgpu-boot-check exited {rc}")
            if mode == "swiotlb":
                rc, out = g.run("grep -qw swiotlb=force /proc/cmdline && test -e /sys/kernel/debug/swiotlb/io_tlb_nslabs")
                if rc:
                    fails.append("swiotlb=force not in effect")
            if mode == "iommu":
                rc, out = g.run("ls /sys/class/iommu/ | grep -q dmar && test -e /sys/bus/pci/devices/0000:01:00.0/iommu_group")
                if rc:
                    fails.append("intel-iommu not active for the qgpu device")
            if mode == "virtio-iommu":
                rc, out = g.run("ls /sys/bus/virtio/drivers/virtio_iommu | grep -q '^virtio' && test -e /sys/bus/pci/devices/0000:01:00.0/iommu_group")
                if rc:
                    fails.append("virtio-iommu not active for the qgpu device")
            rc, _ = g.run("false")
            if rc != 1:
                fails.append(f"console status protocol broken (false gave {rc})")
            t = time.monotonic()
            r = g.ssh("true")
            if r.returncode != 0:
                fails.append(f"ssh root@127.0.0.1:{g.port} true: exit {r.returncode}: {r.stderr.strip()}")
            else:
                r2 = g.ssh("cat /sys/bus/pci/devices/0000:01:00.0/device")
                if r2.stdout.strip() != "0x5147":
                    fails.append(f"ssh command output unexpected: {r2.stdout!r} {r2.stderr!r}")
                notes.append(f"ssh {time.monotonic() - t:.2f}s")
            qrc = g.poweroff(60)
            g.reader.join(10)
            if qrc != 0:
                fails.append(f"run-guest/QEMU exit status {qrc} after poweroff")
            if "reboot: Power down" not in g.text():
                fails.append("no 'reboot: Power down' on the console")
            for bad in ("Kernel panic", "BUG:", "Oops", "WARNING:", "Call Trace"):
                if bad in g.text():
                    fails.append(f"console shows '{bad}'")
        except Exception as e:  # noqa: BLE001 - report any failure as FAIL
            fails.append(f"{type(e).__name__}: {e}")
        finally:
            g.kill()
        ok = not fails
        results[mode] = ok
        print(f"boot-smoke: {mode:8s} {'PASS' if ok else 'FAIL'}  ({', '.join(notes)}; "
              f"driver {'packed' if driver_packed else 'not packed'}; log {log})", flush=True)
        for f in fails:
            print(f"boot-smoke: {mode:8s}   - {f}", flush=True)
    return 0 if all(results.values()) else 1


def bench(args: argparse.Namespace) -> int:
    driver_packed = (OUT / "initramfs.root" / "opt" / "qgpu" / "qgpu.ko").exists()
    times: list[float] = []
    guest_uptimes: list[float] = []
    logdir = OUT / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    extra = ["--smp", str(args.smp)]
    for i in range(args.n):
        g = Guest(args.mode, args.timeout, logdir / f"boot-bench-{args.mode}-{i}.log", extra)
        try:
            _, _, t_ready = g.wait_for(READY, args.timeout)
            # run-guest.sh records CLOCK_BOOTTIME (/proc/uptime) just before
            # starting QEMU; convert our monotonic timestamp to that clock.
            start_file = g.run_dir / "qemu.start"
            boot_minus_mono = time.clock_gettime(time.CLOCK_BOOTTIME) - time.monotonic()
            t_start = float(start_file.read_text()) - boot_minus_mono if start_file.exists() else g.t0
            dt = t_ready - t_start
            times.append(dt)
            m = re.search(r"ready at guest uptime ([0-9.]+) s", g.text())
            up = float(m.group(1)) if m else float("nan")
            guest_uptimes.append(up)
            print(f"boot-bench: run {i + 1}/{args.n}: {dt:.2f} s QEMU start -> {READY} "
                  f"(guest uptime {up:.2f} s)", flush=True)
            g.wait_for(r"^qgpu# $", 30)
            g.poweroff(60)
        except Exception as e:  # noqa: BLE001
            print(f"boot-bench: run {i + 1}/{args.n}: failed: {type(e).__name__}: {e}", flush=True)
        finally:
            g.kill()
    if not times:
        print("boot-bench: no successful run")
        return 1
    print(f"boot-bench: mode={args.mode} smp={args.smp} accel=tcg driver={'loaded' if driver_packed else 'not packed'} "
          f"runs={len(times)}: median {statistics.median(times):.2f} s, min {min(times):.2f} s, "
          f"max {max(times):.2f} s (QEMU start -> ready shell); guest uptime at ready median "
          f"{statistics.median(guest_uptimes):.2f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("smoke")
    s.add_argument("--modes", nargs="+", default=["direct", "swiotlb", "iommu", "virtio-iommu"])
    s.add_argument("--timeout", type=float, default=180)
    b = sub.add_parser("bench")
    b.add_argument("-n", type=int, default=5)
    b.add_argument("--mode", default="direct")
    b.add_argument("--smp", type=int, default=2)
    b.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    return smoke(args) if args.what == "smoke" else bench(args)


if __name__ == "__main__":
    sys.exit(main())
