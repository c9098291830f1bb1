"""The ``qgpu`` command: boot the guest, run commands in it, inspect the device.

    qgpu boot [--mode iommu]            boot and hand over the serial console (echo and
                                        line editing on; 'exit' powers off, Ctrl-] detaches)
    qgpu run [--mode swiotlb] -- CMD    boot, run CMD, print its output, exit with its status
                                        (1 if the kernel's detectors reported anything);
                                        one word is a shell script ('a | b # c'), several
                                        a command and its arguments, quoting kept
    qgpu inspect --qmp SOCKET           statistics, BARs, DMA trace, VRAM of a running guest
    qgpu demo                           the DMA + mmap demonstration (make demo)

``--kernel stock|qgpu|debug|DIR`` chooses the guest kernel for boot, run and demo
(see :mod:`qgpu.kernels`; build one with ``make image KERNEL=...``); ``--no-driver``
leaves the device unbound (the image's qgpu.ko not loaded), for a driver of your own.

Progress goes to stderr; command output to stdout. Exit status 0 on success,
the guest command's status for ``run``, 2 for usage errors, 1 for rig errors
(with a message that says what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from qgpu import health
from qgpu.config import DmaMode, MachineConfig, QgpuSpec
from qgpu.errors import QgpuError
from qgpu.inspector import DeviceInspector
from qgpu.kernels import KNOWN, resolve
from qgpu.machine import GuestMachine
from qgpu.qmp import QmpClient

MiB = 1 << 20


def progress(message: str) -> None:
    """Tell the person at the terminal what is happening."""
    print(f"qgpu: {message}", file=sys.stderr, flush=True)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1:].upper() in units:
        return int(text[:-1], 0) * units[text[-1].upper()]
    return int(text, 0)


def _kernel_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default=None, metavar="|".join(KNOWN) + "|DIR",
                        help="guest kernel (default: stock); debug has KASAN, lockdep, "
                             "kmemleak, DMA-API debugging; DIR: an image folder")


def _machine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=DmaMode.DIRECT,
                        help="DMA mode of the guest (default: direct)")
    _kernel_arg(parser)
    parser.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto",
                        help="accelerator; auto: KVM only if a bounded probe boots a guest")
    parser.add_argument("--vram-size", type=_size, default=64 * MiB,
                        help="VRAM size, e.g. 256M (power of two, 1M..16G)")
    parser.add_argument("--qgpu-prop", action="append", default=[], metavar="NAME=VALUE",
                        help="extra qgpu device property (repeatable)")
    parser.add_argument("--append", action="append", default=[], metavar="WORD",
                        help="extra kernel command-line word (repeatable)")
    parser.add_argument("--overlay", action="append", default=[], metavar="DIR", type=Path,
                        help="add DIR's contents to the guest's / (repeatable): your module, "
                             "tools, scripts")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="extra QEMU argument (repeatable; --qemu-arg=-device "
                             "--qemu-arg=edu)")
    parser.add_argument("--no-driver", dest="load_driver", action="store_false",
                        help="do not load the image's qgpu.ko: the device stays unbound, for "
                             "a driver of your own")


def _boot(args: argparse.Namespace, *, console: str = "plain") -> GuestMachine:
    kernel = resolve(args.kernel)
    if any("=" not in p for p in args.qgpu_prop):
        raise QgpuError("--qgpu-prop takes NAME=VALUE")
    props = tuple((p.split("=", 1)[0], p.split("=", 1)[1]) for p in args.qgpu_prop)
    spec = QgpuSpec(vram_size=args.vram_size, props=props)
    config = MachineConfig.for_kernel(kernel, accel=args.accel, dma_mode=args.mode,
                                      qgpus=(spec,), append=tuple(args.append),
                                      overlays=args.overlay, extra_args=tuple(args.qemu_arg),
                                      load_driver=args.load_driver, console=console)
    progress(f"booting the guest ({args.mode} DMA, kernel {kernel.name} {kernel.release}, "
             f"accelerator {args.accel}) ...")
    start = time.monotonic()
    machine = GuestMachine(config, ssh_key=kernel.ssh_key).start()
    progress(f"guest ready in {time.monotonic() - start:.1f} s ({machine.accel})")
    return machine


def cmd_boot(args: argparse.Namespace) -> int:
    """Boot and attach the terminal to the serial console until the guest powers off."""
    machine = _boot(args, console="edit")
    try:
        assert machine.proc is not None and machine.console is not None
        progress(f"QMP (for 'qgpu inspect'): {machine.proc.workdir / 'qmp-ext.sock'}")
        if machine.ssh is not None:
            progress(f"SSH: ssh -i {machine.ssh.key} -p {machine.ssh.port} "
                     "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1")
        progress("serial console attached; 'exit' powers the guest off, Ctrl-] detaches")
        machine.console.interact()
    finally:
        machine.stop()
    return 0


def guest_command(words: list[str]) -> str:
    """Return the shell text that ``qgpu run -- WORDS`` runs in the guest.

    One word is a shell script, as ``sh -c`` takes it (``qgpu run -- 'a | b # c'``);
    several are a command and its arguments, quoted so that each reaches the
    command as it was given (``qgpu run -- ls "a b"``).
    """
    return words[0] if len(words) == 1 else shlex.join(words)


def cmd_run(args: argparse.Namespace) -> int:
    """Boot, run one command on the console, print its output."""
    if not args.command:
        raise QgpuError("qgpu run needs a command after --")
    machine = _boot(args)
    try:
        result = machine.run(guest_command(args.command), timeout=args.timeout)
        print(result.output)
        if health.detectors(machine).names():
            progress("reading the guest kernel's bug detectors"
                     + (" (kmemleak: 9 s)" if health.detectors(machine).kmemleak else ""))
            found = health.check(machine, settle_leaks=True)
            if not found.ok:
                print(f"qgpu: the guest kernel reported trouble:\n{found.summary()}",
                      file=sys.stderr)
                return result.status or 1
            progress("no reports from " + ", ".join(health.detectors(machine).names()))
        return result.status
    finally:
        machine.stop()


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print statistics, BARs and the DMA trace of a running guest's qgpu."""
    with QmpClient("inspect", timeout=15) as qmp:
        qmp.connect(args.qmp)
        insp = DeviceInspector(qmp, args.device, vram=None, workdir=Path(tempfile.gettempdir()))
        report: dict[str, object] = {
            "bars": {i: {"address": b.address, "size": b.size}
                     for i, b in insp.bars().items()},
            "stats": insp.stats(),
            "dma-trace": insp.dma_trace(),
        }
        if args.vram is not None:
            offset, length = args.vram
            report["vram"] = insp.vram_via_bar(offset, length).hex()
    print(json.dumps(report, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demonstration."""
    from qgpu.tools import demo

    return demo.main(mode=args.mode, accel=args.accel, kernel=args.kernel)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qgpu`` command."""
    parser = argparse.ArgumentParser(prog="qgpu", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("boot", help="boot the guest and attach its serial console")
    _machine_args(p)
    p.set_defaults(func=cmd_boot)
    p = sub.add_parser("run", help="boot, run a command, print its output")
    _machine_args(p)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds the command may take (x4 on kernels with KASAN, lockdep "
                        "or kmemleak)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- the command: one word is a shell script, several a command "
                        "and its arguments")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("inspect", help="statistics, DMA trace, VRAM of a running guest's qgpu")
    p.add_argument("--qmp", required=True, help="QMP socket printed by 'qgpu boot'")
    p.add_argument("--device", default="qgpu0", help="qgpu device id (default qgpu0)")
    p.add_argument("--vram", nargs=2, type=_size, metavar=("OFFSET", "LENGTH"),
                   help="also dump VRAM bytes (hex)")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("demo", help="the DMA + mmap demonstration")
    p.add_argument("--mode", type=DmaMode, choices=list(DmaMode), default=None,
                   help="only this DMA mode (default: every mode)")
    p.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    _kernel_arg(p)
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        status: int = args.func(args)
        return status
    except QgpuError as exc:
        print(f"qgpu: error: {exc}", *getattr(exc, "__notes__", ()), sep="\n",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
