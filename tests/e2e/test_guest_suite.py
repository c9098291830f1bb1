"""The driver's in-guest suite, and bad input from user space, seen from both sides."""

from __future__ import annotations

import errno
import json
import re

from qgpu.inspector import DeviceInspector
from qgpu.machine import GuestMachine

from .guestio import HOST_WAS_SLOW, SUITE, put_file, sh, tool, trace_mark

MiB = 1 << 20
VRAM = 64 * MiB


def test_in_guest_suite(qgpu_guest: GuestMachine, qgpu_inspector: DeviceInspector) -> None:
    """qgpu-test passes every (non-destructive) test; the device saw the work, no errors."""
    insp = qgpu_inspector
    names = [line.strip() for line in sh(qgpu_guest, f"{SUITE} --list").splitlines()
             if line.strip() and "(destructive)" not in line]
    assert len(names) >= 20, f"qgpu-test lists only {names}"
    host0 = insp.stats()
    res = qgpu_guest.ssh_run(SUITE, timeout=300)
    results: dict[str, dict[str, object]] = {}
    summary: dict[str, object] = {}
    for line in res.output.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if obj.get("summary"):
                summary = obj
            else:
                results[str(obj["test"])] = obj
    failed = [f"{name}: {r.get('detail')}" for name, r in results.items()
              if r["result"] == "fail"]
    assert not failed, "in-guest tests failed:\n  " + "\n  ".join(failed)
    missing = sorted(set(names) - set(results))
    assert not missing, f"in-guest tests that did not report: {missing}\n{res.output[-2000:]}"
    assert res.status == 0 and summary.get("fail") == 0, f"qgpu-test: {summary}"
    # Every rig kernel has dma-bufs and udmabuf (Debian's; images/kconfig/qgpu.config).
    skipped = {n: results[n].get("detail") for n in ("dmabuf_export", "dmabuf_import_udmabuf")
               if results[n]["result"] != "pass"}
    assert not skipped, f"dma-buf tests did not run: {skipped}"
    host1 = insp.stats()
    assert host1["errors"] == host0["errors"], "the device retired descriptors with errors"
    assert host1["aborted"] == host0["aborted"] and host1["engine-resets"] == host0[
        "engine-resets"], "the suite needed an engine reset"
    assert host1["bytes-to-vram"] - host0["bytes-to-vram"] >= 16 * MiB   # dma_large
    assert host1["bytes-from-vram"] - host0["bytes-from-vram"] >= 16 * MiB
    assert host1["transfers"] - host0["transfers"] >= 1200    # ring_wrap_threads: 1200 jobs
    assert host1["interrupts"] > host0["interrupts"]


BAD_INPUT = [
    # (qgpu-tool arguments, errno)
    (f"fill {VRAM:#x} 16 0x1", errno.EINVAL),                  # starts at the VRAM end
    (f"fill {VRAM - 16:#x} 32 0x1", errno.EINVAL),             # crosses the VRAM end
    ("fill 0 0 0x1", errno.EINVAL),                             # zero length
    (f"copy-vram 0 {VRAM - 16:#x} 32", errno.EINVAL),
    (f"copy-vram {VRAM:#x} 0 32", errno.EINVAL),
    (f"to-vram {VRAM - 8:#x} /tmp/bad.bin", errno.EINVAL),
    (f"from-vram {VRAM - 8:#x} 16 /tmp/bad-out.bin", errno.EINVAL),
    (f"from-vram 0 {VRAM + 1} /tmp/bad-out.bin", errno.E2BIG),  # > max_xfer
    (f"checksum {VRAM:#x} 4 --via cpu", errno.EINVAL),
    (f"mmap-read {VRAM:#x} 16", errno.EINVAL),                  # mmap beyond the VRAM
    (f"mmap-write {VRAM - 4096:#x} 8192 0x1", errno.EINVAL),    # mapping crosses the end
    (f"mmap-read {VRAM - 4096:#x} 16 --lazy", 0),               # (control: last page is fine)
]


def test_bad_input_gets_clear_errno_and_quiet_dmesg(qgpu_guest: GuestMachine,
                                                    qgpu_inspector: DeviceInspector) -> None:
    insp = qgpu_inspector
    put_file(qgpu_guest, "/tmp/bad.bin", bytes(range(16)))
    sh(qgpu_guest, "dmesg -c >/dev/null")
    host0, mark = insp.stats(), trace_mark(insp)
    wrong = []
    for args, want in BAD_INPUT:
        res = tool(qgpu_guest, args, ok=want == 0)
        if want and (res.get("ok") is not False or res.get("errno") != want):
            wrong.append(f"qgpu-tool {args}: {res} (want errno {want} "
                         f"{errno.errorcode[want]})")
    assert not wrong, "bad input not refused with the right errno:\n  " + "\n  ".join(wrong)
    host1 = insp.stats()
    for stat in ("descriptors", "doorbells", "errors", "access-errors"):
        assert host1[stat] == host0[stat], f"bad input reached the device: stat-{stat} " \
            f"{host0[stat]} -> {host1[stat]}"
    assert trace_mark(insp) == mark, "bad input produced DMA trace records"
    # A marker at info level shows the level parsing below works.
    sh(qgpu_guest, "echo '<6>qgpu-e2e: bad input done' > /dev/kmsg")
    # "<level>[ timestamp] text" (no timestamp on kernels without PRINTK_TIME).
    levels = [(int(m[1]) & 7, m[2]) for line in sh(qgpu_guest, "dmesg -r").splitlines()
              if (m := re.match(r"<(\d+)>(?:\[[^\]]*\] )?(.*)", line))]
    assert (6, "qgpu-e2e: bad input done") in levels, levels
    # A TCG guest on a busy host may note a slow timer interrupt: the host's, not input's.
    loud = [line for level, line in levels
            if level < 6 and not line.startswith(HOST_WAS_SLOW)]
    assert not loud, "bad input logged above info level:\n" + "\n".join(loud)


def test_the_destructive_in_guest_tests_pass(qgpu_guest: GuestMachine) -> None:
    """``qgpu-test --destructive``: the device is removed under an open file with
    mappings, work and buffer objects; every later call gets ENODEV (COPY_BO and
    USERPTR_REGISTER among them), every mapping SIGBUS, and a rescan brings it back."""
    res = qgpu_guest.run("/opt/qgpu/bin/qgpu-test --destructive remove_while_open",
                         timeout=120)
    assert res.status == 0 and '"result":"pass"' in res.output, res.output[-3000:]
    assert qgpu_guest.run("test -c /dev/qgpu0").status == 0, "not re-probed"
