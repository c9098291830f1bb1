"""The pytest plugin's pool of guests kept for a revert (issue 12), without a guest.

Which retired guests are kept (caps per DMA mode and in all, the longest kept
going first), that nothing is kept once the pool closed, that a guest whose
revert raised anything is stopped, never left running outside the pool, and
that kmemleak's check of a retired guest runs beside the next test, and
whose guests connect SSH ahead. Stand-in machines record being stopped; the
template module's checks are replaced.
"""

from __future__ import annotations

import signal
import threading
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

from qgpu import health, pytest_rig, template
from qgpu.config import DmaMode
from qgpu.errors import GuestCrashError, QemuError, RestoreFallbackWarning, SetupError
from qgpu.kernels import Detectors
from qgpu.process import QemuProcess


class FakeMachine:
    """What the pool touches of a GuestMachine: a name, and stop()."""

    def __init__(self, name: str) -> None:
        self.name, self.stopped = name, False

    def stop(self, graceful: bool = True) -> None:
        del graceful
        self.stopped = True

    def __repr__(self) -> str:
        return self.name


class FakeConfig:
    """The options _Pool reads: a guest per test, reverts on."""

    def __init__(self) -> None:
        self.stash = pytest.Stash()
        self.stash[pytest_rig._GUEST_SCOPE] = ("test", "a test of the pool")

    def getoption(self, name: str, default: Any = None) -> Any:
        return {"--qgpu-spare-guest": "on", "--qgpu-revert": "on"}.get(name, default)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> pytest_rig._Pool:
    monkeypatch.setattr(template, "why_not_revertible", lambda machine: None)
    return pytest_rig._Pool(FakeConfig())     # type: ignore[arg-type]


def retire(pool: pytest_rig._Pool, mode: DmaMode, name: str) -> tuple[FakeMachine, bool]:
    """Offer a guest whose last read found nothing; return it and whether it was kept."""
    machine = FakeMachine(name)
    retiree = pytest_rig._Retiree.__new__(pytest_rig._Retiree)
    retiree.mode, retiree.machine = mode, machine     # type: ignore[assignment]
    retiree.found = health.Health()
    return machine, pool._keep(retiree)


def kept(pool: pytest_rig._Pool) -> dict[str, list[str]]:
    return {str(mode): [repr(m) for m in ms] for mode, ms in pool.idle.items() if ms}


MODES = [DmaMode.DIRECT, DmaMode.SWIOTLB, DmaMode.IOMMU, DmaMode.VIRTIO_IOMMU]


def test_the_longest_kept_guest_of_a_mode_goes_beyond_its_cap(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_rig, "MAX_IDLE_PER_MODE", 2)
    first, _ = retire(pool, DmaMode.DIRECT, "d1")
    retire(pool, DmaMode.DIRECT, "d2")
    _, was_kept = retire(pool, DmaMode.DIRECT, "d3")
    assert was_kept and first.stopped
    assert kept(pool) == {"direct": ["d2", "d3"]}
    assert pool.idle_order == pool.idle[DmaMode.DIRECT]


def test_the_cap_per_mode_does_not_also_spend_the_cap_in_all(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """8 kept, the oldest of another mode than the one that goes over its cap of 2:
    only the oldest of that mode goes (before, the oldest of all went too)."""
    monkeypatch.setattr(pytest_rig, "MAX_IDLE", 2 * len(MODES))
    monkeypatch.setattr(pytest_rig, "MAX_IDLE_PER_MODE", 2)
    retire(pool, DmaMode.SWIOTLB, "s1")
    for mode in MODES:
        for n in (1, 2):
            if (mode, n) != (DmaMode.SWIOTLB, 1):
                retire(pool, mode, f"{mode}{n}")
    assert len(pool.idle_order) == 8
    retire(pool, DmaMode.DIRECT, "direct3")
    assert len(pool.idle_order) == 8, kept(pool)
    assert kept(pool)["swiotlb"] == ["s1", "swiotlb2"]
    assert kept(pool)["direct"] == ["direct2", "direct3"]


def test_the_longest_kept_guest_of_all_goes_beyond_the_cap_in_all(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytest_rig, "MAX_IDLE", 3)
    oldest, _ = retire(pool, DmaMode.DIRECT, "d1")
    retire(pool, DmaMode.SWIOTLB, "s1")
    retire(pool, DmaMode.IOMMU, "i1")
    retire(pool, DmaMode.VIRTIO_IOMMU, "v1")
    assert oldest.stopped
    assert kept(pool) == {"swiotlb": ["s1"], "iommu": ["i1"], "virtio-iommu": ["v1"]}


def test_nothing_is_kept_once_the_pool_stopped_its_idle_guests(pool: pytest_rig._Pool) -> None:
    """A retiree still in its last read when the run ends must not add a guest that
    nothing would stop."""
    before, _ = retire(pool, DmaMode.DIRECT, "d1")
    pool._stop_idle()
    assert before.stopped
    _, was_kept = retire(pool, DmaMode.DIRECT, "d2")
    assert not was_kept and kept(pool) == {}     # (the retiree then stops it)


def test_a_guest_whose_revert_raised_is_stopped(pool: pytest_rig._Pool,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of the pool and not handed to a test, it would run on until the rig ends.
    A QgpuError falls back to a restore (not reached here); anything else is raised."""
    machine, _ = retire(pool, DmaMode.DIRECT, "d1")

    def interrupted(machine: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(template, "revert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool._fresh(DmaMode.DIRECT)
    assert machine.stopped and kept(pool) == {}

    failed, _ = retire(pool, DmaMode.DIRECT, "d2")

    def refused(machine: Any, **kwargs: Any) -> Any:
        raise QemuError("QEMU says no")

    def restored(*args: Any, **kwargs: Any) -> template.Started:
        raise RuntimeError("restored instead")

    monkeypatch.setattr(template, "revert", refused)
    monkeypatch.setattr(pytest_rig, "_base_config", lambda config, mode: FakeConfigured())
    monkeypatch.setattr(template, "restore_or_boot", restored)
    with pytest.raises(RuntimeError, match="restored instead"):
        pool._fresh(DmaMode.DIRECT)
    assert failed.stopped


class FakeConfigured:
    """A MachineConfig as far as _fresh reads it before restoring."""

    guest_kernel = type("Kernel", (), {"ssh_key": None})()


def test_guests_of_modes_no_later_test_uses_are_stopped_and_no_more_kept(
        pool: pytest_rig._Pool) -> None:
    direct, _ = retire(pool, DmaMode.DIRECT, "d1")
    swiotlb, _ = retire(pool, DmaMode.SWIOTLB, "s1")
    pool.keep_only({DmaMode.SWIOTLB, DmaMode.IOMMU})
    assert direct.stopped and not swiotlb.stopped
    assert kept(pool) == {"swiotlb": ["s1"]} and [repr(m) for m in pool.idle_order] == ["s1"]
    _, was_kept = retire(pool, DmaMode.DIRECT, "d2")
    assert not was_kept
    _, was_kept = retire(pool, DmaMode.IOMMU, "i1")
    assert was_kept


class FakeGuest(FakeMachine):
    """A live guest at its shell prompt, as retire() sees one."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.console = types.SimpleNamespace(at_prompt=True)
        self.config = types.SimpleNamespace(timeout_scale=4.0, guest_kernel=None)

    def is_alive(self) -> bool:
        return not self.stopped


class SessionConfig(FakeConfig):
    """A guest per DMA mode (the default on kernels with kmemleak); bundles in ``artifacts``."""

    def __init__(self, artifacts: Path) -> None:
        super().__init__()
        self.stash[pytest_rig._GUEST_SCOPE] = ("session", "a test of the pool")
        self.artifacts = artifacts

    def getoption(self, name: str, default: Any = None) -> Any:
        return str(self.artifacts) if name == "--qgpu-artifacts" else \
            super().getoption(name, default)


def test_the_leak_check_of_a_retired_guest_runs_beside_the_next_test(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """kmemleak's settled check of a guest that served several tests (about 10 s under
    TCG on the debug kernel, half of it a wait) runs in the background, one at a time;
    what it finds is reported by the next retirement or the run's end, naming the
    test, its report in that test's bundle."""
    monkeypatch.setattr(health, "detectors", lambda machine: Detectors(kmemleak=True))
    release = threading.Event()
    checked: list[tuple[str, dict[str, bool]]] = []

    def leak_check(machine: FakeGuest, **kwargs: bool) -> health.Health:
        checked.append((machine.name, kwargs))
        assert threading.current_thread() is not threading.main_thread()
        assert release.wait(10)
        return health.Health(problems=[f"kmemleak: 1 new suspected memory leak in {machine}"],
                             reports={"kmemleak.txt": "unreferenced object 0x1234"})

    monkeypatch.setattr(pytest_rig, "_health_after", leak_check)
    pool = pytest_rig._Pool(SessionConfig(tmp_path))   # type: ignore[arg-type]

    def serve(name: str, test: str) -> FakeGuest:
        guest = FakeGuest(name)
        pool.machines[DmaMode.DIRECT] = guest       # type: ignore[assignment]
        pool.windows[DmaMode.DIRECT] = [pytest_rig._Window(f"test_x.py::{name}", 10),
                                        pytest_rig._Window(f"test_x.py::{test}", 100)]
        return guest

    first = serve("d1", "test_leaky")
    assert pool.retire(DmaMode.DIRECT) is None
    assert not release.is_set()     # retire() returned with the check still running
    assert DmaMode.DIRECT not in pool.machines and not first.stopped
    second = serve("d2", "test_after")
    reported: list[str | None] = []
    retiring = threading.Thread(target=lambda: reported.append(pool.retire(DmaMode.DIRECT)))
    retiring.start()
    retiring.join(0.5)
    assert retiring.is_alive(), "a second leak check started beside the first"
    release.set()
    retiring.join(10)
    assert first.stopped
    assert reported[0] is not None and "after test_x.py::test_leaky" in reported[0]
    assert "kmemleak: 1 new suspected memory leak in d1" in reported[0]
    assert (tmp_path / "main" / "test_x.py_test_leaky" / "kmemleak.txt").exists()
    # The second's check may have ended by then (reported above), or not (at the end).
    try:
        pool.close()
        at_close = ""
    except GuestCrashError as exc:
        at_close = str(exc)
    assert second.stopped
    assert f"{reported[0]}\n{at_close}".count("after test_x.py::test_after") == 1
    assert checked == [("d1", {"unload": True, "settle_leaks": True}),
                       ("d2", {"unload": True, "settle_leaks": True})]


def test_the_leak_check_of_a_guest_of_one_test_fails_that_test(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Its leaks can only be its test's: the check runs before retire() returns."""
    monkeypatch.setattr(health, "detectors", lambda machine: Detectors(kmemleak=True))
    monkeypatch.setattr(pytest_rig, "_health_after", lambda machine, **kwargs: health.Health(
        problems=[f"kmemleak: 1 new suspected memory leak in {machine}"]))
    pool = pytest_rig._Pool(SessionConfig(tmp_path))   # type: ignore[arg-type]
    guest = FakeGuest("d1")
    pool.machines[DmaMode.DIRECT] = guest       # type: ignore[assignment]
    pool.windows[DmaMode.DIRECT] = [pytest_rig._Window("test_x.py::test_alone", 100)]
    reported = pool.retire(DmaMode.DIRECT)
    assert guest.stopped and not pool.retirees
    assert reported is not None and "leak in d1" in reported
    assert "after test_x.py::test_alone" in reported


class FakeSsh:
    """A GuestSsh as far as the pool reads it: how many commands ran."""

    def __init__(self, commands_run: int) -> None:
        self.commands_run = commands_run


def guest_that_ran(commands: int | None) -> Any:
    """A guest whose SSH ran ``commands`` commands (None: a guest stopped, without SSH)."""
    machine = FakeMachine("g")
    machine.ssh = None if commands is None else FakeSsh(commands)   # type: ignore[attr-defined]
    return machine


class FakeItem:
    """A test as the pool reads it: its name, DMA mode, fixtures and call's outcome."""

    fixturenames = ("qgpu_guest",)

    def __init__(self, nodeid: str, outcome: str = "passed") -> None:
        self.nodeid = nodeid
        self.callspec = types.SimpleNamespace(params={"qgpu_dma_mode": "direct"})
        self.qgpu_rep_call = types.SimpleNamespace(passed=outcome == "passed")


def ran(pool: pytest_rig._Pool, nodeid: str, commands: int | None,
        outcome: str = "passed") -> None:
    """A test ``nodeid`` ended with ``outcome``, its guest's SSH having run ``commands``."""
    pool.note_ssh_use(FakeItem(nodeid, outcome), guest_that_ran(commands))  # type: ignore[arg-type]


def test_a_function_s_guests_connect_ssh_ahead_until_one_did_not_use_it(
        pool: pytest_rig._Pool) -> None:
    """A handshake costs a guest about 0.15 s under TCG: the guests of a test function
    whose earlier parametrizations ran no SSH command connect only on first use,
    those of any function that used it, or is not seen yet, ahead."""
    console_only, ssh_user = "tests/e2e/t.py::console_only", "tests/e2e/t.py::uses_ssh"
    assert pool.ssh_ahead(f"{console_only}[direct]") and pool.ssh_ahead(f"{ssh_user}[direct]")

    ran(pool, f"{console_only}[direct]", 0)
    ran(pool, f"{ssh_user}[direct-a]", 3)
    ran(pool, f"{ssh_user}[direct-b]", 0)       # another case: once is enough
    assert not pool.ssh_ahead(f"{console_only}[iommu]")
    assert not pool.ssh_ahead(console_only)
    assert pool.ssh_ahead(f"{ssh_user}[swiotlb-a]")
    assert pool.ssh_ahead("tests/e2e/t.py::console_only_not[direct]")  # another function

    ran(pool, f"{console_only}[virtio-iommu]", 1)
    assert pool.ssh_ahead(f"{console_only}[iommu]")


@pytest.mark.parametrize("how", ["failed", "skipped", "guest stopped"])
def test_a_test_that_did_not_pass_says_nothing_of_its_function_s_ssh_use(
        pool: pytest_rig._Pool, how: str) -> None:
    """It may have ended before its SSH command (a skip, a failure, its guest gone)."""
    nodeid = "tests/e2e/t.py::uses_ssh_late[direct]"
    if how == "guest stopped":
        ran(pool, nodeid, None)
    else:
        ran(pool, nodeid, 0, outcome=how)
    assert pool.ssh_ahead("tests/e2e/t.py::uses_ssh_late[iommu]")
    ran(pool, nodeid, 0)
    assert not pool.ssh_ahead("tests/e2e/t.py::uses_ssh_late[iommu]")


def test_a_shared_guest_always_connects_ssh_ahead(pool: pytest_rig._Pool) -> None:
    """A guest that serves several tests connects once; what one test did says nothing."""
    pool.scope = "session"
    ran(pool, "tests/e2e/t.py::console_only[direct]", 0)
    assert pool.ssh_ahead("tests/e2e/t.py::console_only[iommu]")


def test_a_test_s_guest_connects_ssh_as_its_function_did(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether it is restored ahead or when the test asks, reverted or by a new QEMU."""
    asked: list[tuple[str, bool]] = []

    def reverted(machine: Any, *, ssh_ahead: bool) -> Any:
        asked.append(("revert", ssh_ahead))
        return machine

    def restored(config: Any, *, ssh_key: Any, ssh_ahead: bool) -> template.Started:
        asked.append(("restore", ssh_ahead))
        return template.Started(FakeMachine("new"))     # type: ignore[arg-type]

    monkeypatch.setattr(template, "revert", reverted)
    monkeypatch.setattr(template, "restore_or_boot", restored)
    monkeypatch.setattr(pytest_rig, "_base_config", lambda config, mode: FakeConfigured())
    monkeypatch.setattr(health, "check_boot", lambda machine: "")
    ran(pool, "tests/e2e/t.py::console_only[direct]", 0)
    retire(pool, DmaMode.DIRECT, "d1")
    try:
        for nodeid in ("tests/e2e/t.py::console_only[x]", "tests/e2e/t.py::console_only[y]",
                       "tests/e2e/t.py::other[x]"):
            pool.prepare_next(FakeItem(nodeid))        # type: ignore[arg-type]
            assert pool.spare is not None
            pool.spare.take()
            pool.spare = None
    finally:
        if pool.spare_maker is not None:
            pool.spare_maker.close()
    # Without a spare: the guest is made when the test asks.
    pool._start(DmaMode.DIRECT, "tests/e2e/t.py::console_only[z]")
    pool._start(DmaMode.DIRECT, "tests/e2e/t.py::other[z]")
    assert asked == [("revert", False), ("restore", False), ("restore", True),
                     ("restore", False), ("restore", True)]


@pytest.mark.parametrize("revert_fails", [False, True], ids=["reverted", "revert-failed"])
def test_a_reverted_spare_is_checked_by_its_test_and_a_new_qemu_ahead(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch, revert_fails: bool) -> None:
    """A spare that is an earlier guest reverted (its code translated already) is
    handed over unchecked: its check is its test's first console command, with the
    driver's load. One that is a new QEMU -- a revert that failed falls back to
    one -- is checked ahead, in the spare maker's thread, on its cold TCG."""
    checked_in: list[str] = []

    def reverted(machine: Any, *, ssh_ahead: bool) -> Any:
        if revert_fails:
            raise QemuError("QEMU refused the state")
        return machine

    def restored(config: Any, *, ssh_key: Any, ssh_ahead: bool) -> template.Started:
        new = FakeGuest("new")
        new.config.name = "direct"                          # (named in the warning)
        return template.Started(new)                        # type: ignore[arg-type]

    def check_boot(machine: Any) -> str:
        checked_in.append(threading.current_thread().name)
        return ""

    monkeypatch.setattr(template, "revert", reverted)
    monkeypatch.setattr(template, "restore_or_boot", restored)
    monkeypatch.setattr(pytest_rig, "_base_config", lambda config, mode: FakeConfigured())
    monkeypatch.setattr(health, "check_boot", check_boot)
    retire(pool, DmaMode.DIRECT, "d1")
    try:
        pool.prepare_next(FakeItem("tests/e2e/t.py::next[direct]"))    # type: ignore[arg-type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RestoreFallbackWarning)   # (the revert failed)
            machine, checked = pool._start(DmaMode.DIRECT, "tests/e2e/t.py::next[direct]")
    finally:
        if pool.spare_maker is not None:
            pool.spare_maker.close()
    assert repr(machine) == ("new" if revert_fails else "d1")
    assert checked is revert_fails
    assert checked_in == (["qgpu-spare-maker"] if revert_fails else [])


def test_a_guest_that_fails_its_last_look_costs_no_other_report(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the run's end, a guest whose retirement raised (QEMU gone, say) is reported
    beside what the other guests and the background checks found, not instead."""
    machines = {DmaMode.DIRECT: FakeMachine("d"), DmaMode.IOMMU: FakeMachine("i")}
    pool.machines = dict(machines)      # type: ignore[arg-type]
    pool.spare_problems.append("a guest restored ahead found a report")

    def retire_one(mode: DmaMode, *, reusable: bool = False) -> str | None:
        if mode is DmaMode.DIRECT:     # (before the real one would have dropped it)
            raise QemuError("QEMU died while its log was read")
        pool.machines.pop(mode)
        return "the iommu guest found a report"

    monkeypatch.setattr(pool, "retire", retire_one)
    with pytest.raises(GuestCrashError) as failed:
        pool.close()
    message = str(failed.value)
    assert "the direct guest, as the run ended: QemuError: QEMU died while its log was read" \
        in message
    assert machines[DmaMode.DIRECT].stopped
    assert "the iommu guest found a report" in message
    assert "a guest restored ahead found a report" in message


def _retiring(pool: pytest_rig._Pool, name: str, found: health.Health) -> FakeGuest:
    """Retire a guest of the direct mode whose last read (in 0.2 s) finds ``found``."""
    machine = FakeGuest(name)
    machine.config.timeout_scale = 1.0
    reads[machine] = found
    retiree = pytest_rig._Retiree(DmaMode.DIRECT, machine, [],      # type: ignore[arg-type]
                                  keep=pool._keep)
    retiree.start()
    pool.retirees.append(retiree)
    return machine


reads: dict[Any, health.Health] = {}


@pytest.fixture
def reverting(pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Reverts and restores recorded (by guest name; "new" for a restore)."""
    made: list[str] = []

    def reverted(machine: Any, *, ssh_ahead: bool) -> Any:
        made.append(repr(machine))
        return machine

    def restored(config: Any, *, ssh_key: Any, ssh_ahead: bool) -> template.Started:
        made.append("new")
        return template.Started(FakeMachine("new"))     # type: ignore[arg-type]

    monkeypatch.setattr(pytest_rig, "LATE_READ_SECONDS", 0.2)
    monkeypatch.setattr(pytest_rig, "_late_health", lambda machine: reads.pop(machine))
    monkeypatch.setattr(template, "revert", reverted)
    monkeypatch.setattr(template, "restore_or_boot", restored)
    monkeypatch.setattr(pytest_rig, "_base_config", lambda config, mode: FakeConfigured())
    return made


def test_a_guest_made_ahead_waits_for_the_last_read_of_the_guest_before(
        pool: pytest_rig._Pool, reverting: list[str]) -> None:
    """With no retired guest waiting yet (the test before was short), a spare waits
    for the one still in its last read and reverts it: a new QEMU costs several
    times the CPU. One whose read finds trouble is not kept: then a new QEMU."""
    guest = _retiring(pool, "d1", health.Health())
    assert pool._fresh(DmaMode.DIRECT, ahead=True).reverted
    assert reverting == ["d1"] and not guest.stopped
    troubled = _retiring(pool, "d2", health.Health(problems=["a late report"]))
    assert not pool._fresh(DmaMode.DIRECT, ahead=True).reverted
    assert reverting == ["d1", "new"] and troubled.stopped


def test_a_guest_made_ahead_does_not_wait_for_a_last_read_due_later(
        pool: pytest_rig._Pool, reverting: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """After a test shorter than the last read's delay, the next test's guest would
    wait for the read of the guest before (its test held up): a new QEMU restores it
    instead, and the guest in its read is kept for a later test."""
    monkeypatch.setattr(pytest_rig, "LATE_READ_SECONDS", 1.0)
    _retiring(pool, "d1", health.Health())
    start = time.monotonic()
    assert not pool._fresh(DmaMode.DIRECT, ahead=True).reverted
    assert time.monotonic() - start < 0.9     # (the read was due in 1 s)
    assert reverting == ["new"]
    for retiree in pool.retirees:
        retiree.join()
    assert kept(pool) == {"direct": ["d1"]}


def test_a_guest_a_test_waits_for_does_not_wait_for_a_last_read(
        pool: pytest_rig._Pool, reverting: list[str]) -> None:
    """Made when the test asks for it (no spare), a new QEMU restores it at once."""
    _retiring(pool, "d1", health.Health())
    assert not pool._fresh(DmaMode.DIRECT).reverted
    assert reverting == ["new"]
    for retiree in pool.retirees:
        retiree.join()
    assert kept(pool) == {"direct": ["d1"]}


def test_an_interrupted_run_stops_every_guest_without_reading_it(
        pool: pytest_rig._Pool, reverting: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM: a guest may still run the interrupted test's command, and a
    look at it would wait behind that (a minute and more), where CI systems kill a
    job some seconds after their SIGTERM. Every guest -- in use, kept for a revert, in
    its last read -- is stopped unread, at once."""
    def no_look(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an interrupted run's guest was looked at")

    monkeypatch.setattr(pool, "retire", no_look)
    in_use = FakeGuest("d")
    pool.machines = {DmaMode.DIRECT: in_use}    # type: ignore[dict-item]
    kept_one, _ = retire(pool, DmaMode.IOMMU, "i1")
    monkeypatch.setattr(pytest_rig, "LATE_READ_SECONDS", 60.0)
    monkeypatch.setattr(pytest_rig, "_late_health", no_look)
    reading = _retiring(pool, "d0", health.Health())
    start = time.monotonic()
    pool.close(interrupted=True)
    assert time.monotonic() - start < 5
    assert in_use.stopped and kept_one.stopped and reading.stopped
    assert not pool.machines and not pool.idle_order


def test_an_interrupted_run_kills_a_guest_its_look_holds_and_makes_no_more(
        pool: pytest_rig._Pool, reverting: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest whose last look does not end (its console stuck) is not waited for
    past INTERRUPTED_WAIT: its QEMU is killed. No guest is made once the run stops."""
    stuck = threading.Event()

    def look_that_hangs(machine: Any) -> health.Health:
        stuck.wait(60)
        return health.Health()

    monkeypatch.setattr(pytest_rig, "_late_health", look_that_hangs)
    monkeypatch.setattr(pytest_rig, "INTERRUPTED_WAIT", 0.5)
    qemu = QemuProcess(Path("/bin/sleep"), ["60"], name="stand-in")   # (a QEMU's lifecycle)
    qemu.start()
    try:
        reading = _retiring(pool, "d0", health.Health())
        reading.proc = qemu                  # type: ignore[attr-defined]
        time.sleep(0.4)                 # (its read, due after 0.2 s, is under way)
        start = time.monotonic()
        pool.close(interrupted=True)
        assert time.monotonic() - start < 3
        assert qemu.wait(5) == -signal.SIGKILL
        with pytest.raises(SetupError, match="the run was interrupted"):
            pool._fresh(DmaMode.DIRECT, ahead=True)
        assert reverting == []
    finally:
        stuck.set()
        for retiree in pool.retirees:
            retiree.join(5)
        qemu.stop(grace=0)


def test_an_interrupt_while_the_pool_closes_stops_the_rest_unread(
        pool: pytest_rig._Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (or Ctrl-C) during the session's last looks: the guests left are
    stopped without a look and the interrupt goes on, rather than each look
    waited for in turn."""
    in_use = FakeGuest("d")
    pool.machines = {DmaMode.DIRECT: in_use}    # type: ignore[dict-item]

    def interrupted_look() -> None:
        raise KeyboardInterrupt("SIGTERM: the run was asked to stop")

    monkeypatch.setattr(pool, "_close_and_read", interrupted_look)
    with pytest.raises(KeyboardInterrupt):
        pool.close()
    assert in_use.stopped and pool.stopping.is_set()


class LateReadConfig(FakeConfig):
    """A guest per test, with ``--qgpu-late-read 0.25``."""

    def getoption(self, name: str, default: Any = None) -> Any:
        return 0.25 if name == "--qgpu-late-read" else super().getoption(name, default)


def test_the_last_read_comes_as_long_after_the_test_as_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--qgpu-late-read: a driver whose timers fire later than the qgpu driver's
    watchdog (1 s) needs its retired guests watched longer; one whose timers are
    short, less. A retired guest's last read comes that long after its test's check,
    scaled like the guest's timeouts; by default LATE_READ_SECONDS."""
    monkeypatch.setattr(template, "why_not_revertible", lambda machine: None)
    read_at: list[float] = []

    def late_health(machine: Any) -> health.Health:
        read_at.append(time.monotonic())
        return health.Health()

    monkeypatch.setattr(pytest_rig, "_late_health", late_health)
    asked = pytest_rig._Pool(LateReadConfig())        # type: ignore[arg-type]
    default = pytest_rig._Pool(FakeConfig())          # type: ignore[arg-type]
    retired = time.monotonic()
    for pool in (asked, default):
        guest = FakeGuest("d1")
        guest.config.timeout_scale = 2.0
        pool.machines[DmaMode.DIRECT] = guest         # type: ignore[assignment]
        assert pool.retire(DmaMode.DIRECT, reusable=True) is None
    assert [r.delay for r in asked.retirees] == [0.5]
    assert [r.delay for r in default.retirees] == [pytest_rig.LATE_READ_SECONDS * 2.0]
    default.retirees[0].cancelled.set()
    for retiree in asked.retirees + default.retirees:
        retiree.join(5.0)
    assert len(read_at) == 1 and read_at[0] - retired >= 0.5, (read_at, retired)
    assert kept(asked) == {"direct": ["d1"]} and kept(default) == {}
