"""Choose the accelerator: KVM only where a bounded probe shows guests boot.

On some hosts ``/dev/kvm`` exists but nested virtualisation hangs guests early
in boot. The probe boots the real guest kernel under KVM with a command that
powers off at once; if that does not finish within the time limit, TCG it is.
The verdict is cached per host boot (keyed by the kernel's boot id).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from qgpu import paths

PROBE_TIMEOUT = 20.0


def _cache_file() -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return paths.cache_dir() / f"kvm-probe-{boot_id}"


def kvm_works(kernel: Path, initrd: Path, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """Return whether a guest boots and powers off under KVM within ``timeout`` s."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    cache = _cache_file()
    if cache.exists():
        return cache.read_text().strip() == "kvm"
    cmd = [str(paths.qemu_binary()), "-accel", "kvm", "-machine", "q35", "-cpu", "host",
           "-m", "512M", "-nodefaults", "-display", "none", "-no-reboot",
           "-kernel", str(kernel), "-initrd", str(initrd), "-serial", "null",
           "-append", "console=ttyS0 quiet panic=-1 qgpu_nossh=1 qgpu_noload=1 "
                      "qgpu_cmd=dHJ1ZQ=="]      # base64("true"): run it, power off
    try:
        ok = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("kvm\n" if ok else "tcg\n")
    return ok


def choose(requested: str, kernel: Path, initrd: Path) -> str:
    """Resolve ``auto`` to ``kvm`` or ``tcg``; pass explicit choices through."""
    if requested != "auto":
        return requested
    return "kvm" if kvm_works(kernel, initrd) else "tcg"
