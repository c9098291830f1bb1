"""Is the guest kernel still healthy? What its bug detectors reported.

After each test the rig asks the guest, in one command:

- the kernel log: ``BUG:`` (KASAN, KFENCE, sleeping in atomic context, ...), ``WARNING:``
  (lockdep, DMA-API debugging, debug objects, WARN_ON), ``UBSAN:``, oopses, panics, call
  traces and IOMMU faults;
- kmemleak, where the kernel has it: every unreferenced object it lists, with the
  guest's ``jiffies`` when it was allocated (:class:`Leak`). kmemleak reports an object
  only once it is 5 seconds old and an earlier scan saw it unchanged, so one scan at
  the end of a test cannot report that test's leaks; ``settle_leaks=True`` scans, and
  scans again 5.5 s after the first scan began (about 9 s under TCG), and then nothing
  the test leaked escapes. The
  pytest plugin does that when a shared guest retires and names the test that
  allocated each object from the jiffies each test's window began and ended at
  (``--qgpu-kmemleak=test`` does it after every test instead);
- DMA-API debugging, where the kernel has it: ``error_count`` must be 0. It counts every
  driver's errors, among them mappings a driver still held when it was unbound, while
  ``dma_debug_driver=qgpu`` prints only qgpu's (``num_errors`` is not a count: it is how
  many more errors will be printed, which :func:`prepare_command` makes unlimited);
- lockdep, where the kernel has it: ``debug_locks`` must still be 1 (lockdep switches
  itself off after its first report, and a guest without it checks nothing more).

Any of these fails the test; the reports go into its artifact bundle. The one
exception is a report of a known bug of the kernel itself, outside the driver
(:data:`KNOWN_KERNEL_BUGS`, each matched by its whole stack): it is taken out of
the log and shown as a warning in the test report, never silently.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field

from qgpu.console import CommandResult
from qgpu.errors import GuestCrashError
from qgpu.kernels import Detectors
from qgpu.machine import GuestMachine

#: Lines in the kernel log that mean something went wrong.
DMESG_BAD = re.compile(
    r"BUG:|WARNING:|Oops|Call Trace|general protection|Kernel panic|UBSAN:|"
    r"DMA-API: debugging out of memory|kmemleak: Kernel memory leak detector disabled|"
    r"DMAR: DRHD: handling fault|DMAR: \[DMA (Read|Write)")



@dataclass(frozen=True)
class KnownKernelBug:
    """A bug of the guest kernel, not of the driver, that its detectors report."""

    name: str
    #: Every one of these must be in the report (its WARNING line and stack).
    signature: tuple[str, ...]
    why: str
    #: This must be in the log before the report (anything, if empty).
    after: str = ""


KNOWN_KERNEL_BUGS = (
    KnownKernelBug(
        name="x86 PAT: untrack_pfn() warns after remap_pfn_range() failed (Linux 6.12)",
        signature=("WARNING:", "arch/x86/mm/pat/memtype.c", "untrack_pfn",
                   "zap_page_range_single", "remap_pfn_range"),
        after="FAULT_INJECTION: forcing a failure",
        why="when remap_pfn_range_notrack() fails to allocate a page table (here: an "
            "injected failure), it zaps the range; unmap_single_vma() then calls "
            "untrack_pfn(vma, 0, 0), whose get_pat_info() finds nothing mapped at the "
            "start of the VMA and warns. remap_pfn_range() untracks the real range "
            "right after, so nothing leaks: the warning is the kernel's own mistake, "
            "seen only when that one allocation fails"),
)

#: One WARN report: from its "cut here" line to its "end trace" line.
_WARN_REPORT = re.compile(r"^[^\n]*-{4,}\[ cut here \]-{4,}\n"
                          r".*?---\[ end trace [0-9a-f]+ \]---[^\n]*\n?", re.M | re.S)


def split_known_kernel_bugs(dmesg: str) -> tuple[str, list[tuple[KnownKernelBug, str]]]:
    """Take the reports of :data:`KNOWN_KERNEL_BUGS` out of a kernel log.

    Returns the log without them, and each one taken out with its text.
    """
    known: list[tuple[KnownKernelBug, str]] = []
    kept: list[str] = []
    pos = 0
    for m in _WARN_REPORT.finditer(dmesg):
        report = m.group(0)
        bug = next((b for b in KNOWN_KERNEL_BUGS
                    if all(s in report for s in b.signature) and b.after in dmesg[:m.start()]),
                   None)
        if bug is not None:
            kept.append(dmesg[pos:m.start()])
            pos = m.end()
            known.append((bug, report))
    kept.append(dmesg[pos:])
    return "".join(kept), known


KMEMLEAK = "/sys/kernel/debug/kmemleak"
CLEAR_WARN_ONCE = "/sys/kernel/debug/clear_warn_once"
#: The guest's jiffies right now (the first line of /proc/timer_list that names them).
#: Shell built-ins only, here and in the other commands of every test's check: on
#: the debug kernel under TCG each fork and exec costs 0.1-0.3 s.
JIFFIES_NOW = ("while read -r l; do case $l in jiffies:*) echo \"$l\"; break;; esac; "
               "done < /proc/timer_list")
#: Whether qgpu.ko is loaded (a built-in test: no grep of /proc/modules).
QGPU_LOADED = "[ -d /sys/module/qgpu ]"
_LEAK = re.compile(r"^unreferenced object 0x[0-9a-f]+ \(size \d+\):\n\s+comm \"[^\"]*\", "
                   r"pid \d+, jiffies (\d+)", re.M)
DMA_API = "/sys/kernel/debug/dma-api"
_SECTION = "=====qgpu-health:"


@dataclass(frozen=True)
class Leak:
    """One object kmemleak found unreferenced."""

    jiffies: int                #: the guest's jiffies when it was allocated
    report: str                 #: kmemleak's text for it (comm, hex dump, backtrace)


@dataclass
class Health:
    """What one check found: problems (one line each) and the reports behind them."""

    problems: list[str] = field(default_factory=list)
    reports: dict[str, str] = field(default_factory=dict)   #: artifact file name -> text
    leaks: list[Leak] = field(default_factory=list)
    jiffies: int | None = None  #: the guest's jiffies when the check ended

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.problems

    def summary(self) -> str:
        """Return the problems and the start of each report, for a test failure."""
        parts = ["\n".join(self.problems)]
        for name, text in self.reports.items():
            parts.append(f"--- {name} ---\n{text[:4000]}")
        return "\n".join(parts)


def prepare_command(det: Detectors) -> str:
    """Return the guest shell command that starts a test with a clean slate.

    The kernel log is emptied (what the test's check reads is then the test's own),
    after printing it: :func:`late_reports` finds what arrived after the previous
    check (which emptied it too, see ``clear_log``). DMA-API debugging prints every
    error, not only the first of the boot.
    """
    return f"echo '{_SECTION}dmesg'; dmesg -c; echo '{_SECTION}end'; {_reset_command(det)}"


def _reset_command(det: Detectors) -> str:
    """Return the part of :func:`prepare_command` after the kernel log is emptied."""
    # A WARN_ON_ONCE an earlier test fired would stay silent in this one.
    parts = [f"if [ -w {CLEAR_WARN_ONCE} ]; then echo 1 > {CLEAR_WARN_ONCE}; fi"]
    if det.dma_api_debug:
        parts.append(f"echo 1 > {DMA_API}/all_errors")
    if det.kmemleak:
        parts.append(JIFFIES_NOW)       # where the test's window of allocations begins
    return "; ".join(parts)


def late_reports(prepare_output: str) -> list[str]:
    """Return the bad kernel-log lines in :func:`prepare_command`'s output.

    The previous check read the log clean; these arrived after it (a timer firing
    after the driver was unloaded, say).
    """
    dmesg = _sections(prepare_output).get("dmesg", "")
    return [line for line in dmesg.splitlines() if DMESG_BAD.search(line)]


def parse_jiffies(output: str) -> int | None:
    """Return N from a ``jiffies: N`` line of :data:`JIFFIES_NOW`'s output."""
    m = re.search(r"^jiffies: (\d+)", output, re.M)
    return int(m[1]) if m else None


def check_command(det: Detectors, *, unload: bool = False, scan_leaks: bool = True,
                  settle_leaks: bool = False, clear_log: bool = False) -> str:
    """Return the guest shell command that gathers everything :func:`parse` reads.

    With ``unload``, qgpu.ko is unloaded first: its remove and exit paths run, and
    DMA-API debugging counts the mappings it still held. ``scan_leaks=False`` skips
    kmemleak's scan (3 s under TCG; pointless right after boot, when every object is
    younger than the 5 s kmemleak waits before it reports one). ``settle_leaks`` scans
    once before the scan that reports, which starts 5.5 s after the first began: every
    object the test allocated is then past those 5 s and seen unchanged (about 6 s
    more under TCG). ``clear_log`` empties the kernel log once
    read, so that the next :func:`prepare_command` shows only what came later.
    """
    parts = []
    if unload:
        # A dma_fence (sync_file) of the driver holds the module until an RCU
        # grace period after its last reference: "in use" for up to 2 s is
        # that, longer is a reference the test left behind.
        parts.append(f"echo '{_SECTION}unload'; if {QGPU_LOADED}; then i=0; "
                     "until out=$(rmmod qgpu 2>&1); do i=$((i+1)); case $out in "
                     "*'in use'*|*'temporarily unavailable'*) [ $i -lt 20 ] || break; "
                     "usleep 100000;; *) break;; esac; done; "
                     f"if {QGPU_LOADED}; then echo \"$out\"; else echo unloaded; fi; "
                     "else echo unloaded; fi")
    if det.kmemleak and scan_leaks and settle_leaks:
        # kmemleak reports an object only from a scan that starts 5 s after its
        # allocation and finds its checksum unchanged since the scan before. The
        # first scan records the checksums at once, however young the objects; the
        # one that reports starts 5.5 s after it began (uptime in centiseconds),
        # instead of both after a 6 s sleep.
        parts.append("cs() { read -r u _ < /proc/uptime; c=${u#*.}; "
                     "echo $((${u%.*} * 100 + ${c#0})); }; "
                     f"t0=$(cs); echo scan > {KMEMLEAK}; d=$((t0 + 550 - $(cs))); "
                     "[ $d -le 0 ] || usleep $((d * 10000))")
    if det.kmemleak and scan_leaks:
        # The scan is synchronous: the file then lists the new suspects. 'clear'
        # marks them reported, so the next test starts with none.
        parts.append(f"echo '{_SECTION}kmemleak'; echo scan > {KMEMLEAK} && cat {KMEMLEAK}"
                     f" && echo clear > {KMEMLEAK}")
    if det.dma_api_debug:
        # Mappings a driver still held when unbound are counted after the device
        # lost its driver, so dma_debug_driver's filter does not print them: the
        # dump lists what is still mapped for qgpu's devices.
        # The devices are found with read, one grep reads the dump.
        parts.append(f"echo '{_SECTION}dma-api'; read -r n < {DMA_API}/error_count; "
                     f"echo \"$n\"; echo '{_SECTION}dma-api-dump'; q=; "
                     "for d in /sys/bus/pci/devices/*; do read -r v < $d/vendor; "
                     "read -r i < $d/device; [ \"$v:$i\" = 0x1234:0x5147 ] && "
                     "q=\"$q|${d##*/}\"; done; "
                     f"if [ -n \"$q\" ]; then grep -E \" (${{q#|}}) \" {DMA_API}/dump; fi")
    if det.lockdep:
        parts.append(f"echo '{_SECTION}lockdep'; while read -r k v; do "
                     "[ \"$k\" = debug_locks: ] && echo \"$k $v\" && break; "
                     "done < /proc/lockdep_stats")
    if det.kmemleak:
        parts.append(f"echo '{_SECTION}jiffies'; {JIFFIES_NOW}")  # the end of the test's window
    # Last: reports that arrive while the rest runs (after the unload, say) are in it.
    parts.append(f"echo '{_SECTION}dmesg'; dmesg{' -c' if clear_log else ''}")
    return "; ".join(parts)


def _sections(output: str) -> dict[str, str]:
    found: dict[str, str] = {}
    name = None
    lines: list[str] = []
    for line in output.splitlines():
        if line.startswith(_SECTION):
            if name is not None:
                found[name] = "\n".join(lines)
            name, lines = line[len(_SECTION):].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        found[name] = "\n".join(lines)
    return found


def parse(output: str, det: Detectors, *, scan_leaks: bool = True) -> Health:
    """Read the output of :func:`check_command` into a :class:`Health`."""
    health = Health()
    sec = _sections(output)
    dmesg = sec.get("dmesg")
    if dmesg is None:
        health.problems.append("the guest did not answer the health check")
        health.reports["health-check.txt"] = output
        return health
    if "unload" in sec and sec["unload"].strip().splitlines()[-1:] != ["unloaded"]:
        health.problems.append(f"rmmod qgpu failed after the test: {sec['unload'].strip()}")
    dmesg, known = split_known_kernel_bugs(dmesg)
    for bug, report in known:
        warnings.warn(f"the guest kernel reported a known bug of its own, not the "
                      f"driver's: {bug.name} ({bug.why})", stacklevel=2)
        health.reports.setdefault("known-kernel-bugs.txt", "")
        health.reports["known-kernel-bugs.txt"] += f"{bug.name}\n{report}\n"
    bad = [line for line in dmesg.splitlines() if DMESG_BAD.search(line)]
    if bad:
        health.problems.append("the guest kernel log shows trouble:\n" + "\n".join(bad[:20]))
        health.reports["dmesg-report.txt"] = dmesg
    health.jiffies = parse_jiffies(sec.get("jiffies", ""))
    if det.kmemleak and scan_leaks:
        leaks = sec.get("kmemleak", "").strip()
        if "unreferenced object" in leaks:
            blocks = re.split(r"(?m)^(?=unreferenced object )", leaks)
            for block in blocks:
                m = _LEAK.match(block)
                if m:
                    health.leaks.append(Leak(int(m[1]), block.rstrip()))
            health.problems.append(f"kmemleak: {leaks.count('unreferenced object')} "
                                   "unreferenced object(s)")
            health.reports["kmemleak.txt"] = leaks
        elif leaks:
            health.problems.append(f"kmemleak could not scan: {leaks.splitlines()[0]}")
    if det.dma_api_debug:
        errors = sec.get("dma-api", "").strip()
        if errors != "0":
            health.problems.append(
                f"DMA-API debugging counted errors: error_count={errors!r} (it counts every "
                "driver's; qgpu's are in the kernel log, except mappings held at unbind: "
                "see dma-api-dump.txt)")
            health.reports["dma-api-dump.txt"] = sec.get("dma-api-dump", "").strip() or \
                "(no DMA mappings left for qgpu's devices)"
    if det.lockdep:
        locks = sec.get("lockdep", "").split()
        if locks[-1:] != ["1"]:
            health.problems.append("lockdep is off (debug_locks is not 1): it reported "
                                   "something earlier, or never started; the guest can no "
                                   "longer check locking")
    return health


def detectors(machine: GuestMachine) -> Detectors:
    """Return the detectors of the machine's kernel (none if it is not known)."""
    kernel = machine.config.guest_kernel
    return kernel.detectors if kernel is not None else Detectors()


def check(machine: GuestMachine, *, unload: bool = False, scan_leaks: bool = True,
          settle_leaks: bool = False, clear_log: bool = False,
          timeout: float = 60.0) -> Health:
    """Ask a running guest what its kernel's detectors saw (see the module's doc)."""
    return _run_check(machine, unload=unload, scan_leaks=scan_leaks,
                      settle_leaks=settle_leaks, clear_log=clear_log, timeout=timeout)[1]


def _run_check(machine: GuestMachine, *, after: str = "", unload: bool = False,
               scan_leaks: bool = True, settle_leaks: bool = False, clear_log: bool = False,
               timeout: float = 60.0) -> tuple[CommandResult, Health]:
    """Run :func:`check_command` (then ``after``, past an end mark); return it, parsed."""
    det = detectors(machine)
    if machine.console is not None:
        # The console's copy of a report is old news once the kernel log below is
        # read: what has arrived is taken off the console (so that a later command
        # does not see it as a new crash), and what is still on its way is read
        # as this command's output, which is not watched for crashes. Nothing is
        # waited for.
        with contextlib.suppress(GuestCrashError):
            machine.console.drain(0)
    command = check_command(det, unload=unload, scan_leaks=scan_leaks,
                            settle_leaks=settle_leaks, clear_log=clear_log)
    if after:
        command += f"; echo '{_SECTION}end'; {after}"
    # The output quotes old reports (dmesg): only a crash while it runs is news, and
    # the kernel log it reads last has that too.
    result = machine.run(command, timeout=timeout, watch_crashes=False)
    return result, parse(result.output, det, scan_leaks=scan_leaks)


def check_boot(machine: GuestMachine, *, then: str = "", timeout: float = 60.0) -> str:
    """Raise :class:`GuestCrashError` if the kernel reported anything since the guest started.

    The log is emptied once read, and the rest of :func:`prepare_command` done,
    so that a test's check reads only what it caused. ``then``, a shell
    command, runs right after, in the same console command (each command is a
    round trip through a console whose TCG code is still cold after a restore);
    its output is returned. If it fails, :class:`~qgpu.errors.GuestCommandError`
    is raised, after the kernel's own reports.
    """
    after = _reset_command(detectors(machine)) + (f"; {then}" if then else "")
    result, found = _run_check(machine, after=after, scan_leaks=False, clear_log=True,
                               timeout=timeout)
    if not found.ok:
        raise GuestCrashError(f"{machine.config.name}: the guest kernel reported trouble "
                              f"since the guest started (its boot, or restore):\n"
                              f"{found.summary()}",
                              found.reports.get("dmesg-report.txt", ""))
    result.check()
    return result.output.split(f"{_SECTION}end", 1)[-1]
