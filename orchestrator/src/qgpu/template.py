"""Saved guests: boot once, then start every later guest from the saved state.

A *template* is a guest booted to its ready prompt with the driver not yet
loaded, stopped, and saved the way QEMU's VM templating does it
(``docs/system/vm-templating.rst``): guest RAM lives in a file of its own
(``memory-backend-file``, shared), and the migration stream in a second file
holds the devices' state only (the ``x-ignore-shared`` capability leaves the
shared RAM out). A guest restored from it (:func:`restore`) maps that RAM file privately,
copy-on-write, so any number of guests can start from one template and
none of them changes it. Shared VRAM (the rig's default) is not part of a
template: a restored guest gets a fresh, zeroed VRAM file of its own, as a
booted one does; VRAM without a shared file is in the state, as it was.

A template is valid for one exact machine: its key hashes the QEMU binary,
kernel and initramfs, and the whole QEMU command line the configuration
gives (DMA mode, vIOMMU, devices and their properties, kernel arguments).
Templates live in ``$QGPU_CACHE/templates/KEY/``; a changed input is a new
key, and :func:`prune` removes templates unused for a week and all but the
:data:`PRUNE_KEEP` most recently used.

A restored guest can be made its template again in the same QEMU
(:func:`revert`): under TCG, that keeps the code translated from the
template's RAM, which a new QEMU would translate again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from qgpu import accel, health, paths
from qgpu.config import MachineConfig, RamFile
from qgpu.errors import GuestCrashError, GuestError, QemuError, QgpuError, QmpError, SetupError
from qgpu.machine import GuestMachine

#: Bumped when what a template holds, or how it is made, changes.
#: 2: keys without the image paths; the boot's kernel log checked before saving.
#: 3: that log emptied once checked.
FORMAT = 3
#: When a template is made, those unused for this many days are removed, and
#: all but this many of the most recently used (about 170 MiB each). A whole
#: `make test` uses about 40 (its guests' DMA modes, devices and properties on
#: four kernels): with 24 kept, every run made 16 of them again, 7 of them on
#: the debug kernel (half a minute each).
PRUNE_DAYS = 7.0
PRUNE_KEEP = 48


def cache_dir() -> Path:
    """Return the folder of the templates (``$QGPU_CACHE/templates``)."""
    return paths.cache_dir() / "templates"


@functools.lru_cache(maxsize=64)
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    del size, mtime_ns                  # the cache key: a changed file is hashed again
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digest(path: Path) -> str:
    """Return the SHA-256 of ``path``'s contents (cached while the file is unchanged)."""
    st = path.stat()
    return _file_digest(path.resolve(), st.st_size, st.st_mtime_ns)


def template_config(config: MachineConfig) -> MachineConfig:
    """Return ``config`` as a template guest boots it: without loading the driver.

    Whoever uses a restored guest loads the driver (or a driver of their own).
    """
    return dataclasses.replace(config, load_driver=False)


def machine_argv(config: MachineConfig, accel_name: str) -> list[str]:
    """Return the QEMU arguments of ``config`` with every per-instance path made constant."""
    return config.qemu_args(
        accel=accel_name, serial_socket=Path("SERIAL"), qmp_socket=Path("QMP"),
        console_log=Path("CONSOLE"), ssh_port=0 if config.ssh else None,
        vram_files={spec.id: Path(f"VRAM-{spec.id}") for spec in config.qgpus},
        qmp_server=Path("QMP-EXT"), ram=RamFile(Path("RAM")))


def template_key(config: MachineConfig, accel_name: str) -> str:
    """Return the key of the template of ``config``: it changes with any input.

    The kernel and initramfs count by content, not by path: a checkout
    elsewhere that builds the same images (they are reproducible) finds the
    templates another one made.
    """
    h = hashlib.sha256()
    anywhere = dataclasses.replace(template_config(config), kernel=Path("KERNEL"),
                                   initrd=Path("INITRD"))
    h.update(json.dumps([FORMAT, machine_argv(anywhere, accel_name)]).encode())
    for path in (paths.qemu_binary(), config.kernel, config.initrd):
        h.update(file_digest(path).encode())
    if accel_name == "kvm":
        # -cpu host: the guest saw this host's CPU, and QEMU does not check it on load.
        h.update(_host_cpu().encode())
    return h.hexdigest()[:24]


def _host_cpu() -> str:
    """Return what identifies the host CPU a KVM guest sees (model, flags, kernel)."""
    wanted = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
    fields = [line for line in lines if line.split(":", 1)[0].strip() in wanted]
    return "\n".join([*fields, os.uname().release])


@dataclass(frozen=True)
class Template:
    """A saved guest in ``folder``: its RAM, its device state, and what it was made from."""

    folder: Path
    #: Whether :func:`get` made it in this call (one boot), rather than finding it.
    made_now: bool = field(default=False, compare=False)

    @property
    def ram(self) -> Path:
        """The guest RAM file."""
        return self.folder / "ram"

    @property
    def state(self) -> Path:
        """The migration stream: device state, no RAM."""
        return self.folder / "state"

    @property
    def info(self) -> dict[str, object]:
        """What ``info.json`` records: key, accelerator, argv, sizes, seconds to make."""
        data: dict[str, object] = json.loads((self.folder / "info.json").read_text())
        return data

    @property
    def accel(self) -> str:
        """The accelerator the template ran under (a restore must use the same)."""
        return str(self.info["accel"])

    def complete(self) -> bool:
        """Whether the template was made to the end (``info.json`` is written last)."""
        return (self.folder / "info.json").is_file() and self.ram.is_file() \
            and self.state.is_file()


def _lock_file(folder: Path) -> Path:
    """Return the lock file of the template in ``folder``.

    :func:`prune` removes it with the template, while it holds the lock: a
    process that opened it before then finds, once it has the lock, that the
    path names another file or none, and opens it again (:func:`_lock`), so the
    lock is never split between the old file and a new one.
    """
    return folder.parent / (folder.name.split(".", 1)[0] + ".lock")


@contextlib.contextmanager
def _lock(folder: Path, mode: int = fcntl.LOCK_EX) -> Iterator[bool]:
    """Hold ``folder``'s lock.

    Exclusive to make or remove the template, shared to start a guest from
    it. With ``LOCK_NB`` in ``mode``, yield False if another process holds it.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_file(folder)
    while True:
        with open(path, "a") as f:
            try:
                fcntl.flock(f, mode)
            except BlockingIOError:
                yield False
                return
            try:
                if os.fstat(f.fileno()).st_ino != os.stat(path).st_ino:
                    continue            # prune() removed it meanwhile: a new one
            except FileNotFoundError:
                continue
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
            return


def get(config: MachineConfig, *, ssh_key: Path | None = None,
        progress: bool = True) -> Template:
    """Return the template of ``config``, making it first if there is none.

    Making one boots the guest once (a few seconds under TCG); concurrent
    callers wait for one maker. A half-made template is never used: it is
    made in a temporary folder and renamed when complete.
    """
    accel_name = accel.choose(config.accel, config.kernel, config.initrd)
    key = template_key(config, accel_name)
    folder = cache_dir() / key
    template = Template(folder)
    if template.complete():
        os.utime(folder)                # in use: not pruned
        return template
    with _lock(folder):
        if template.complete():         # another process made it meanwhile
            return template
        if progress:
            print(f"qgpu: making the guest template {key} ({config.name}, "
                  f"{config.dma_mode}): one boot", file=sys.stderr, flush=True)
        make(config, folder, accel_name=accel_name, ssh_key=ssh_key)
    prune()
    return Template(folder, made_now=True)


def make(config: MachineConfig, folder: Path, *, accel_name: str,
         ssh_key: Path | None = None) -> Template:
    """Boot ``config`` to its ready prompt, stop it and save it as a template in ``folder``."""
    work = folder.with_name(folder.name + f".making-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.monotonic()
    cfg = dataclasses.replace(template_config(config), accel=accel_name)
    try:
        machine = GuestMachine(cfg, ssh_key=ssh_key, ram=RamFile(work / "ram"))
        try:
            machine.start(connect_ssh=False)
            # A boot whose log has a report (a stall on a busy host, say) is not
            # kept. The log is emptied once checked: a restored guest's log then
            # holds only what happened since its restore, and reading it is quick.
            found = health.check(machine, scan_leaks=False, clear_log=True)
            if not found.ok:
                raise GuestCrashError(
                    f"{config.name}: not saved as a template: the guest kernel reported "
                    f"trouble while booting:\n{found.summary()}",
                    found.reports.get("dmesg-report.txt", ""))
            machine.save(work / "state")
        finally:
            machine.stop(graceful=False)
        info = {"format": FORMAT, "key": folder.name, "accel": accel_name,
                "name": config.name, "dma_mode": str(config.dma_mode),
                "argv": machine_argv(cfg, accel_name),
                "state_bytes": (work / "state").stat().st_size,
                "ram_bytes_used": (work / "ram").stat().st_blocks * 512,
                "boot_seconds": machine.boot_seconds,
                "seconds": round(time.monotonic() - start, 3), "made": time.time()}
        (work / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    template = Template(folder)
    if not template.complete():
        raise QemuError(f"the template in {folder} is incomplete after it was made")
    return template


def prune(max_age_days: float = PRUNE_DAYS, keep: int = PRUNE_KEEP) -> list[Path]:
    """Remove old templates; return what was removed.

    Those unused for ``max_age_days`` go, and all but the ``keep`` most
    recently used (half-made ones only after the age limit). A changed input
    (a rebuilt QEMU, a new kernel) makes a new key and leaves the old
    template behind: :func:`get` calls this whenever it makes one, so the
    cache does not grow without bound. Use marks the folder (its mtime).
    """
    removed: list[Path] = []
    root = cache_dir()
    if not root.is_dir():
        return removed
    folders = []
    for entry in root.iterdir():
        with contextlib.suppress(OSError):
            if entry.is_dir():
                folders.append((entry.stat().st_mtime, entry))
    folders.sort(reverse=True)
    cutoff = time.time() - max_age_days * 86400
    for n, (mtime, entry) in enumerate(folders):
        making = ".making-" in entry.name          # another process may be at it
        if mtime < cutoff or (n >= keep and not making):
            # Not while another process makes it or starts a guest from it.
            with _lock(entry, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                if free or making:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
    # The lock files of templates that are gone (removed just now, or earlier),
    # under their lock: see _lock_file.
    keys = {entry.name.split(".", 1)[0] for entry in root.iterdir() if entry.is_dir()}
    for lock in root.glob("*.lock"):
        if lock.stem not in keys:
            with _lock(root / lock.stem, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                if free and not (root / lock.stem).exists():
                    lock.unlink(missing_ok=True)
    return removed


def restore(config: MachineConfig, *, ssh_key: Path | None = None,
            template: Template | None = None, ssh_ahead: bool = True) -> GuestMachine:
    """Return a running guest of ``config`` restored from its template (made if needed).

    The guest is at its prompt with the driver not loaded, its clock set,
    SSH set up if ``ssh_key`` is given (it connects in the background, its
    first use waiting for that; or, not ``ssh_ahead``, on its first use).
    ``template`` defaults to :func:`get`'s; one made for another machine raises
    :class:`~qgpu.errors.SetupError`.
    """
    template = template or get(config, ssh_key=ssh_key)
    cfg = template_config(config)
    # Shared: prune() waits until QEMU has the files open (then they may go).
    with _lock(template.folder, fcntl.LOCK_SH):
        if not template.complete():
            raise SetupError(f"no complete template in {template.folder} (never made, or "
                             "removed meanwhile): qgpu.template.get() makes it")
        key = template_key(cfg, template.accel)
        if key != template.folder.name:
            raise SetupError(f"the template {template.folder.name} was made for another "
                             f"machine (this configuration's key is {key}): use "
                             "qgpu.template.get() for this configuration")
        machine = GuestMachine(cfg, ssh_key=ssh_key)
        machine.restore(template.ram, template.state, template.accel, ssh_ahead=ssh_ahead)
        machine.template_ram_id = _file_id(template.ram)
    try:
        machine.settings_at_restore = host_settings(machine)
    except BaseException:
        machine.stop(graceful=False)
        raise
    return machine


#: A QEMU is reverted at most this many times, then replaced by a new restore:
#: its TCG translation cache, and whatever else a long-lived QEMU accumulates,
#: stays bounded.
MAX_REVERTS = 50
#: qgpu properties that record an action rather than hold a setting (the AER
#: error last raised): the device's reset, part of a revert, clears them (spec 9.5).
CLEARED_BY_RESET = frozenset({"x-fault-aer"})


def host_settings(machine: GuestMachine) -> dict[str, object]:
    """Return what a test may change from the host that a revert would not undo.

    A revert resets the machine and loads its template's state, but the qgpu
    devices' ``x-`` properties (fault knobs, DMA delay and slice: spec 9.4,
    9.5) keep what ``qom-set`` gave them, a device plugged or unplugged
    (with an id or without) stays so, and migration capabilities stay set:
    those, read through QMP, are compared before each revert
    (:func:`why_not_revertible`) whoever changed them (the rig, or a test's
    own QMP client). :func:`revert` sets the properties back; the others
    it refuses.
    """
    if machine.qmp is None:
        raise QemuError(f"{machine.config.name}: not running")
    qmp = machine.qmp

    def children(path: str) -> list[str]:
        try:
            found = qmp.command("qom-list", {"path": path})
        except QmpError:            # a container QEMU makes only when it needs one
            return []
        return sorted(f"{p['name']}: {p['type']}" for p in found
                      if p["type"].startswith("child<"))

    settings: dict[str, object] = {
        "devices": children("/machine/peripheral"),
        "devices without an id": children("/machine/peripheral-anon"),
        # Not x-ignore-shared: a revert needs it, and QEMU itself refuses one
        # without it, quoted by the rig when it restores instead.
        "migration capabilities": sorted(
            c["capability"] for c in qmp.command("query-migrate-capabilities")
            if c["state"] and c["capability"] != "x-ignore-shared")}
    for spec in machine.config.qgpus:
        for prop in qmp.command("qom-list", {"path": spec.qom_path}):
            name, kind = prop["name"], prop["type"]
            if name.startswith("x-") and not kind.startswith(("child<", "link<")):
                settings[f"{spec.id}.{name}"] = qmp.qom_get(spec.qom_path, name)
    return settings


def why_not_revertible(machine: GuestMachine) -> str | None:
    """Return why ``machine`` cannot be reverted to its template, or None if it can.

    It must be a guest :func:`restore` started (and not booted), alive, at
    its shell prompt, reverted fewer than :data:`MAX_REVERTS` times, under
    TCG, with the host settings it started with (:func:`host_settings`), but
    for its qgpu devices' ``x-`` properties, which :func:`revert` sets back
    (or the device's reset clears: :data:`CLEARED_BY_RESET`).
    """
    return _revert_plan(machine)[0]


def _revert_plan(machine: GuestMachine) -> tuple[str | None, dict[tuple[str, str], object]]:
    """Return :func:`why_not_revertible`'s answer, and the device properties to set back.

    The second maps (QOM path, property) to the value it had at the restore,
    for each qgpu ``x-`` property changed since.
    """
    if machine.restored_from is None or machine.settings_at_restore is None:
        return "not restored from a template", {}
    if not machine.is_alive():
        return "QEMU is not running", {}
    if machine.console is None or not machine.console.at_prompt:
        return "its shell is not at the prompt", {}
    if machine.reverts >= MAX_REVERTS:
        return f"reverted {machine.reverts} times already", {}
    if machine.accel != "tcg":
        # What a revert saves is TCG's translations; under KVM it would save
        # little, and it has not been tested there (nested KVM hangs here).
        return f"reverts are made under TCG only, and it runs on {machine.accel}", {}
    try:
        now = host_settings(machine)
    except QgpuError as exc:
        return f"its settings cannot be read: {exc}", {}
    before = machine.settings_at_restore
    # host_settings' keys for them: "<device id>.<property>" (an id may hold a
    # dot, a property name does not).
    paths = {spec.id: spec.qom_path for spec in machine.config.qgpus}
    properties = {key: (paths[dev], name) for key in before
                  for dev, _, name in [key.rpartition(".")] if dev in paths}
    changed = sorted(k for k in {*now, *before} if now.get(k) != before.get(k))
    refused = [k for k in changed if k not in properties or k not in now]
    if refused:
        return "changed from the host: " + ", ".join(refused), {}
    return None, {properties[k]: before[k] for k in changed
                  if properties[k][1] not in CLEARED_BY_RESET}


def revert(machine: GuestMachine, *, ssh_ahead: bool = True) -> GuestMachine:
    """Make ``machine``, a guest :func:`restore` started, its template again, in place.

    Under TCG this costs a fraction of a new QEMU's restore: the code
    translated from the template's RAM is kept (:meth:`GuestMachine.revert`).
    SSH connects again in the background, or (not ``ssh_ahead``) on first use.
    The qgpu devices' ``x-`` properties a test changed (fault knobs) are set
    back to what they were at the restore first.
    Raises :class:`~qgpu.errors.SetupError` saying why a guest cannot be
    reverted (:func:`why_not_revertible`), :class:`~qgpu.errors.QemuError`
    quoting QEMU if the revert fails (stop the guest then).
    """
    why, set_back = _revert_plan(machine)
    if why is not None:
        raise SetupError(f"{machine.config.name}: cannot be reverted to its template: {why}")
    assert machine.restored_from is not None
    folder = machine.restored_from.parent
    # Shared, as a restore: prune() does not remove the template meanwhile.
    with _lock(folder, fcntl.LOCK_SH):
        if not Template(folder).complete():
            raise SetupError(f"{machine.config.name}: its template {folder} was removed "
                             "meanwhile")
        # Its state must be the one saved with the RAM file this QEMU maps: a
        # template pruned and made again in the same folder has new files (the
        # old RAM file, still mapped, keeps its inode).
        if _file_id(Template(folder).ram) != machine.template_ram_id:
            raise SetupError(f"{machine.config.name}: its template {folder} was made "
                             "again since the guest was restored from it")
        assert machine.qmp is not None     # (alive: _revert_plan)
        for (path, name), value in set_back.items():
            # A fault knob a test set: what the device does meanwhile, before
            # the revert resets it, nobody sees.
            machine.qmp.qom_set(path, name, value)
        return machine.revert(ssh_ahead=ssh_ahead)


def _file_id(path: Path) -> tuple[int, int]:
    """Return the (device, inode) of ``path``: which file it is, not what it holds."""
    st = path.stat()
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class Started:
    """A guest :func:`restore_or_boot` started, and why it was booted if it was."""

    machine: GuestMachine
    #: None if restored; else the restore's error, which the guest was booted after.
    cold_boot_reason: str | None = None
    #: Whether its template was made for it (one boot) rather than found in the cache.
    template_made: bool = False
    #: Whether it is a guest of an earlier test, reverted to its template in place.
    reverted: bool = False
    #: Why reverting a guest for it failed (it was restored instead), if it did.
    revert_failure: str | None = None


def restore_or_boot(config: MachineConfig, *, ssh_key: Path | None = None,
                    template: Template | None = None, ssh_ahead: bool = True) -> Started:
    """Return a guest of ``config`` restored from its template, or booted if that fails.

    A template that cannot be made (its boot reports trouble, the cache is
    full, QEMU cannot save the machine) is not the end either: the guest is
    booted, which raises if it does not boot. Nor is a restore that fails
    (QEMU refuses the state, the guest's console does not answer; SSH, which
    connects in the background, is not waited for here). Either way the guest is
    booted instead, without the driver as a restored one is, and
    :attr:`Started.cold_boot_reason` quotes the error, for the caller to
    report -- never silently. ``template`` defaults to :func:`get`'s;
    ``ssh_ahead`` is :func:`restore`'s (a booted guest connects SSH at once).
    """
    try:
        tmpl = template or get(config, ssh_key=ssh_key)
    except (QemuError, GuestError, OSError) as exc:
        # No template (the boot reported trouble, the cache is full, QEMU cannot
        # save this machine): a plain boot, as without templates.
        return _boot_instead(config, ssh_key, "making the template failed", exc, made=False)
    try:
        return Started(restore(config, ssh_key=ssh_key, template=tmpl, ssh_ahead=ssh_ahead),
                       template_made=tmpl.made_now)
    except (QemuError, GuestError) as exc:
        return _boot_instead(config, ssh_key, f"restoring {tmpl.folder} failed", exc,
                             made=tmpl.made_now)


def _boot_instead(config: MachineConfig, ssh_key: Path | None, what: str,
                  exc: BaseException, *, made: bool) -> Started:
    """Boot ``config`` as a template guest would be; the reason quotes ``exc``."""
    reason = "\n".join((f"{what}: {exc}", *getattr(exc, "__notes__", ())))
    machine = GuestMachine(template_config(config), ssh_key=ssh_key)
    return Started(machine.start(), reason, template_made=made)
