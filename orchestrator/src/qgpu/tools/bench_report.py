"""``make bench``'s outputs: results.json (every figure, the machine), report.html, a summary.

The results file holds each benchmark's raw results (``sections``) and a flat
map of named figures (``figures``: value, unit, which direction is better),
which is what ``make bench-compare`` compares. The report is one
self-contained HTML file: text, tables and inline SVG plots (matplotlib), no
external resources.
"""

from __future__ import annotations

import datetime
import html
import io
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qgpu.errors import QgpuError
from qgpu.paths import repo_root

SCHEMA = 1
KiB, MiB = 1 << 10, 1 << 20

#: Section names, in report order, with their headings.
SECTIONS = {
    "engine": "The DMA engine alone (qtest, no guest)",
    "driver": "DMA through the driver, in the guest, per DMA mode",
    "guest": "Guest boot per kernel, and writes through VRAM mappings",
    "restore": "A guest restored from a template beside a cold boot",
}

TCG_NOTE = (
    "Under TCG (QEMU's emulator, the default on these machines; each guest section records "
    "the accelerator it ran with), the guest's CPU work is emulated: "
    "pinning, DMA mapping, swiotlb bouncing, page faults and the guest's own memcpy run "
    "many times slower than on hardware, while the device's engine copies with the host's "
    "memcpy at host speed. So a ratio to the guest's memcpy says how the driver's path "
    "compares with what the same (emulated) guest CPU can do, and the engine's ratio to the "
    "host's memcpy says what the device model costs; neither predicts real hardware. "
    "Figures are medians of repeats (their spread is in results.json), except the guest's "
    "writes through mappings (best of 5) and the concurrent submitters (one timed run "
    "each), each beside a baseline measured in the same run: compare ratios across "
    "machines, not absolute numbers.")


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                              check=False).stdout.strip()
    except OSError:
        return ""


def machine_description(qemu: str | None = None) -> dict[str, Any]:
    """Describe the host, the QEMU binary and the checkout the figures come from."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = next(int(line.split()[1]) * 1024
                   for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):
        mem = 0
    top = repo_root()
    commit = _run("git", "-C", str(top), "rev-parse", "HEAD")
    dirty = bool(_run("git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"))
    qemu_version = _run(qemu, "--version").partition("\n")[0] if qemu else ""
    return {"cpu_model": model, "cpus": os.cpu_count(), "memory_bytes": mem,
            "host_kernel": platform.release(), "python": platform.python_version(),
            "qemu": qemu_version, "commit": commit, "commit_dirty": dirty,
            "load_average": list(os.getloadavg())}


# ---- figures: the flat map bench-compare compares ------------------------------------

def _fig(value: float, unit: str, better: str, kind: str = "primary") -> dict[str, Any]:
    """Return a figure.

    ``kind``: ``primary`` (a measured quantity of what is benchmarked),
    ``baseline`` (what it is measured beside), ``derived`` (a ratio or another
    view of a primary figure): bench-compare's group means take primary
    figures only.
    """
    return {"value": value, "unit": unit, "better": better, "kind": kind}


def _rate_of(size: float, seconds: float) -> float:
    return size / seconds if seconds > 0 else 0.0


def _engine_figures(eng: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for row in eng["rows"]:
        size, total = row["size"], row["bytes"]
        host = _rate_of(total, row["host_memcpy_s"]["median"])
        yield f"engine/host_memcpy/{size}", _fig(host, "B/s", "higher", "baseline")
        for op in ("to_vram", "from_vram", "vram_copy"):
            wall = _rate_of(total, row[op]["wall_s"]["median"])
            engine = _rate_of(total, row[op]["engine_s"]["median"])
            yield f"engine/{op}/{size}/wall", _fig(wall, "B/s", "higher", "derived")
            yield f"engine/{op}/{size}/engine", _fig(engine, "B/s", "higher")
            yield (f"engine/{op}/{size}/per_descriptor",
                   _fig(row[op]["engine_s"]["median"] / row["descs"], "s", "lower", "derived"))
            if host:
                yield (f"engine/{op}/{size}/engine_vs_memcpy",
                       _fig(engine / host, "x", "higher", "derived"))
        if "edu_s" in row:
            yield f"engine/edu/{size}", _fig(_rate_of(size, row["edu_s"]["median"]), "B/s",
                                             "higher", "baseline")
    for row in eng["sg_growth"]:
        yield (f"engine/sg_1MiB/{row['segments']}_segments",
               _fig(row["engine_s"]["median"], "s", "lower"))
    hold = eng["main_loop_hold"]
    for row in hold["rows"]:
        yield (f"engine/main_loop_hold/{row['segments']}_segments",
               _fig(row["read_s"]["median"], "s", "lower"))
    yield "engine/main_loop_hold/idle_read", _fig(hold["idle_read_s"]["median"], "s", "lower",
                                                  "baseline")


def _driver_figures(drv: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for mode, res in drv["modes"].items():
        base = {c["size"]: c for c in res["results"]["memcpy"]}
        for op, cells in res["results"].items():
            for cell in cells:
                if "median_s" not in cell:
                    continue
                rate = _rate_of(cell["size"], cell["median_s"])
                yield (f"driver/{mode}/{op}/{cell['size']}",
                       _fig(rate, "B/s", "higher", "baseline" if op == "memcpy" else "primary"))
                ref = base.get(cell["size"], {})
                if op != "memcpy" and ref.get("median_s"):
                    yield (f"driver/{mode}/{op}/{cell['size']}/vs_memcpy",
                           _fig(ref["median_s"] / cell["median_s"], "x", "higher", "derived"))
        for name, lat in res.get("latency", {}).items():
            if isinstance(lat, dict) and "median_s" in lat:
                yield f"driver/{mode}/latency/{name}/median", _fig(lat["median_s"], "s", "lower")
                yield (f"driver/{mode}/latency/{name}/p99",
                       _fig(lat["p99_s"], "s", "lower", "derived"))
        for sub in res.get("submitters", []):
            if "seconds" in sub:
                yield (f"driver/{mode}/submitters/{sub['threads']}",
                       _fig(_rate_of(sub["bytes"], sub["seconds"]), "B/s", "higher"))
        for lazy in res.get("lazy_touch", []):
            if "median_s" in lazy:
                yield (f"driver/{mode}/lazy_touch/{lazy['pages']}_pages/per_page",
                       _fig(lazy["median_s"] / lazy["pages"], "s", "lower"))


def _guest_figures(g: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, k in g["boots"].items():
        yield f"guest/boot/{name}", _fig(statistics.median(k["seconds"]), "s", "lower",
                                         "baseline" if name == g["baseline"] else "primary")
    m = g["mappings"]
    yield "guest/writes/ram", _fig(m["ram_mb_s"] * 1e6, "B/s", "higher", "baseline")
    yield "guest/writes/vram_wc", _fig(m["vram_wc_mb_s"] * 1e6, "B/s", "higher")
    yield "guest/writes/vram_wc_vs_ram", _fig(m["vram_vs_ram"], "x", "higher", "derived")
    yield "guest/writes/lazy_first_touch", _fig(m["lazy_first_touch_mb_s"] * 1e6, "B/s",
                                                "higher")


def _restore_figures(r: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    boot, rest = statistics.median(r["boot_s"]), statistics.median(r["restore_s"])
    yield "restore/boot", _fig(boot, "s", "lower", "baseline")
    yield "restore/restore", _fig(rest, "s", "lower")
    yield "restore/speedup", _fig(boot / rest if rest else 0.0, "x", "higher", "derived")
    yield "restore/private_bytes", _fig(statistics.median(r["private_bytes"]), "B", "lower")
    if r.get("revert_s"):                       # results made before reverts have none
        revert = statistics.median(r["revert_s"])
        yield "restore/revert", _fig(revert, "s", "lower")
        yield "restore/revert_speedup", _fig(rest / revert if revert else 0.0, "x", "higher",
                                             "derived")
    ssh = r.get("ssh")                          # nor SSH, before it was measured
    if ssh:
        for what in ("connect", "command"):
            off = statistics.median(ssh[f"nodelay_{what}_s"])
            on = statistics.median(ssh[f"nagle_{what}_s"])
            yield f"restore/ssh_{what}_nagle", _fig(on, "s", "lower", "baseline")
            yield f"restore/ssh_{what}", _fig(off, "s", "lower")
            yield f"restore/ssh_{what}_speedup", _fig(on / off if off else 0.0, "x", "higher",
                                                      "derived")


FIGURES: dict[str, Callable[[dict[str, Any]], Iterator[tuple[str, dict[str, Any]]]]] = {
    "engine": _engine_figures, "driver": _driver_figures, "guest": _guest_figures,
    "restore": _restore_figures,
}


def figures(sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flatten the sections' results into named figures (see the module doc)."""
    out: dict[str, dict[str, Any]] = {}
    for name, data in sections.items():
        if name in FIGURES:
            out.update(FIGURES[name](data))
    return out


class Results:
    """The results file, written again after each section so that nothing measured is lost."""

    def __init__(self, path: Path, machine: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine, "sections": {}, "errors": {}, "seconds": {},
            "figures": {}}

    def add(self, section: str, result: dict[str, Any], seconds: float) -> None:
        """Record a section's result and how long it took; write the file."""
        self.data["sections"][section] = result
        self.data["seconds"][section] = seconds
        self.data["figures"] = figures(self.data["sections"])
        self.save()

    def fail(self, section: str, message: str, seconds: float) -> None:
        """Record that a section failed, and why; write the file."""
        self.data["errors"][section] = message
        self.data["seconds"][section] = seconds
        self.save()

    def save(self) -> None:
        """Write the file (atomically: a reader never sees half of it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        tmp.replace(self.path)


def load(path: Path) -> dict[str, Any]:
    """Read a results file; :class:`QgpuError` naming the file if it is not one."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QgpuError(f"cannot read bench results {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "figures" not in data:
        raise QgpuError(f"{path} is not a qgpu bench results file (schema {SCHEMA}); "
                        "make bench writes one in build/bench/results.json")
    return data


# ---- the report -----------------------------------------------------------------------

def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plot_engine(eng: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt
    rows = eng["rows"]
    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(layout="constrained", figsize=(7.5, 4.2))
    host = [_rate_of(r["bytes"], r["host_memcpy_s"]["median"]) / 1e9 for r in rows]
    ax.plot(sizes, host, "k--", marker="o", label="host memcpy (baseline)")
    for op, label in (("to_vram", "to VRAM"), ("from_vram", "from VRAM"),
                      ("vram_copy", "VRAM to VRAM")):
        engine = [_rate_of(r["bytes"], r[op]["engine_s"]["median"]) / 1e9 for r in rows]
        wall = [_rate_of(r["bytes"], r[op]["wall_s"]["median"]) / 1e9 for r in rows]
        line = ax.plot(sizes, engine, marker="o", label=f"{label}: engine")[0]
        ax.plot(sizes, wall, ":", marker="x", color=line.get_color(),
                label=f"{label}: doorbell to idle over qtest")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [_size(s) for s in sizes], rotation=30)
    ax.set_ylabel("GB/s")
    ax.set_title("Engine throughput per descriptor size (full rings)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    plots = [_svg(fig)]
    sg = eng["sg_growth"]
    fig, ax = plt.subplots(layout="constrained", figsize=(5.5, 3.5))
    segs = [r["segments"] for r in sg]
    ax.plot(segs, [r["engine_s"]["median"] * 1e3 for r in sg], marker="o")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("SG segments of one 1 MiB copy")
    ax.set_ylabel("engine time, ms")
    ax.set_title("Cost of SG segments")
    ax.grid(alpha=0.3)
    plots.append(_svg(fig))
    return plots


def _plot_driver(drv: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt
    modes = list(drv["modes"])
    if not modes:
        return []
    plots = []
    fig, axes = plt.subplots(1, len(modes), layout="constrained",
                             figsize=(4.2 * len(modes), 4.2), sharey=True, squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        res = drv["modes"][mode]
        for op, cells in res["results"].items():
            pts = [(c["size"], _rate_of(c["size"], c["median_s"]) / 1e6)
                   for c in cells if "median_s" in c]
            if pts:
                style = {"color": "k", "linestyle": "--"} if op == "memcpy" else {}
                ax.plot(*zip(*pts, strict=True), marker="o", markersize=3,
                        label="guest memcpy (baseline)" if op == "memcpy" else op, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(res["sizes"], [_size(s).replace(" ", "") for s in res["sizes"]],
                      rotation=45)
        ax.set_title(f"{mode}")
        ax.set_xlabel("transfer size")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MB/s (median)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("DMA through the driver per DMA mode, beside the guest's memcpy")
    plots.append(_svg(fig))

    lat = [(mode, drv["modes"][mode].get("latency", {})) for mode in modes]
    lat = [(m, v) for m, v in lat if "fill_4k_fence" in v]
    if lat:
        fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(9, 3.6), squeeze=False)
        for ax, (name, title) in zip(axes[0], (("fill_4k_fence", "4 KiB fill: submit to fence"),
                                               ("copy_user_4k", "4 KiB COPY_USER ioctl")),
                                     strict=True):
            ax.boxplot([v[name]["samples_us"] for _, v in lat], whis=(1, 99), showfliers=True,
                       flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(lat) + 1), [m for m, _ in lat])
            ax.set_yscale("log")
            ax.set_ylabel("µs")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        fig.suptitle("Latency of small jobs (box: quartiles; whiskers: 1st-99th percentile)")
        plots.append(_svg(fig))

    fig, axes = plt.subplots(1, 2, layout="constrained", figsize=(9, 3.6), squeeze=False)
    for mode in modes:
        res = drv["modes"][mode]
        subs = [s for s in res.get("submitters", []) if "seconds" in s]
        if subs:
            axes[0][0].plot([s["threads"] for s in subs],
                            [_rate_of(s["bytes"], s["seconds"]) / 1e6 for s in subs],
                            marker="o", label=mode)
        lazy = [x for x in res.get("lazy_touch", []) if "median_s" in x]
        if lazy:
            axes[0][1].plot([x["pages"] for x in lazy],
                            [x["median_s"] / x["pages"] * 1e6 for x in lazy],
                            marker="o", label=mode)
    axes[0][0].set_xlabel("concurrent submitters (threads, 1 MiB COPY_USER each)")
    axes[0][0].set_ylabel("MB/s, all together")
    axes[0][0].set_xticks([1, 2, 4])
    axes[0][1].set_xscale("log", base=2)
    axes[0][1].set_yscale("log")
    axes[0][1].set_xlabel("pages touched in a fresh lazy VRAM mapping")
    axes[0][1].set_ylabel("µs per page (first touch)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Concurrent submitters; cost of faulting the lazy mapping")
    plots.append(_svg(fig))
    return plots


def _plot_guest(g: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(layout="constrained", figsize=(5.5, 3.3))
    names = list(g["boots"])
    ax.boxplot([g["boots"][n]["seconds"] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_ylabel("seconds to a ready shell")
    ax.set_title("Boot to a ready shell, driver loaded, per kernel")
    ax.grid(alpha=0.3)
    return [_svg(fig)]


def _plot_restore(r: dict[str, Any]) -> list[str]:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(layout="constrained", figsize=(5.5, 3.3))
    series = [("cold boot", r["boot_s"]), ("restore", r["restore_s"])]
    if r.get("revert_s"):
        series.append(("revert in place", r["revert_s"]))
    ax.boxplot([values for _, values in series])
    ax.set_xticks(range(1, len(series) + 1), [name for name, _ in series])
    ax.set_yscale("log")
    ax.set_ylabel("seconds to the first console answer")
    ax.set_title("Cold boot vs restore from a template" +
                 (" vs revert in place" if r.get("revert_s") else ""))
    ax.grid(alpha=0.3)
    return [_svg(fig)]


PLOTS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "engine": _plot_engine, "driver": _plot_driver, "guest": _plot_guest,
    "restore": _plot_restore,
}


def _engine_text(eng: dict[str, Any]) -> list[str]:
    lines = []
    for row in eng["rows"]:
        host = _rate_of(row["bytes"], row["host_memcpy_s"]["median"])
        ratios = ", ".join(
            f"{op.replace('_', ' ')} "
            f"{_rate_of(row['bytes'], row[op]['engine_s']['median']) / host:.2f}x"
            for op in ("to_vram", "from_vram", "vram_copy"))
        per_desc = row["to_vram"]["engine_s"]["median"] / row["descs"]
        lines.append(f"{_size(row['size'])} x {row['descs']} descriptors per doorbell: "
                     f"engine / host memcpy: {ratios}; engine time per descriptor (to VRAM) "
                     f"{per_desc * 1e6:.1f} µs")
    big = [_rate_of(r["bytes"], r[op]["engine_s"]["median"])
           / _rate_of(r["bytes"], r["host_memcpy_s"]["median"])
           for r in eng["rows"] if r["size"] >= 64 * KiB for op in ("to_vram", "from_vram")]
    if big:
        lines.append(f"Goal (issue 15): the engine copying guest memory at >= 0.9x host "
                     f"memcpy from 64 KiB up: lowest ratio here {min(big):.2f}x, "
                     f"{'met' if min(big) >= 0.9 else 'not met'}.")
    small = min(eng["rows"], key=lambda r: r["size"])
    fixed = (small["to_vram"]["engine_s"]["median"] - small["host_memcpy_s"]["median"]) \
        / small["descs"]
    for row in eng["rows"]:
        # The copy of a small descriptor is negligible: what remains is its fixed cost.
        if row["size"] == 64 * KiB and small["size"] <= 16 * KiB and fixed > 0:
            copy = row["host_memcpy_s"]["median"] / row["descs"]
            lines.append(
                f"What a descriptor costs beyond its copy: about {fixed * 1e9:.0f} ns (engine "
                f"time per {_size(small['size'])} descriptor less host memcpy of "
                f"{_size(small['size'])}: fetching and retiring it, status and trace). Beside "
                f"a 64 KiB memcpy of {copy * 1e6:.2f} µs that alone caps the ratio at "
                f"{copy / (copy + fixed):.2f}x.")
    sg = eng["sg_growth"]
    first, last = sg[0], sg[-1]
    per_seg = (last["engine_s"]["median"] - first["engine_s"]["median"]) / max(
        1, last["segments"] - first["segments"])
    hold = eng["main_loop_hold"]
    idle = hold["idle_read_s"]["median"]
    for row in hold["rows"]:
        what = ("plain ranges" if row["segments"] == 1
                else f"{row['segments']} one-byte SG segments each")
        lines.append(f"Main-loop hold: a register read right after a doorbell of "
                     f"{hold['descs']} x {_size(hold['length'])} descriptors ({what}) took "
                     f"{row['read_s']['median'] * 1e3:.2f} ms, "
                     f"{row['read_s']['median'] / idle:.0f}x an idle read.")
    edu = [(r["size"], _rate_of(r["size"], r["edu_s"]["median"])) for r in eng["rows"]
           if "edu_s" in r]
    if edu:
        lines.append("QEMU's edu device doing the same copies 4 KiB per command: " + ", ".join(
            f"{_size(size)} {rate / 1e6:.1f} MB/s" for size, rate in edu) + ".")
    lines.append(f"SG segments: {last['segments']} segments cost "
                 f"{last['engine_s']['median'] / first['engine_s']['median']:.1f}x one segment "
                 f"for the same 1 MiB, about {per_seg * 1e9:.0f} ns per extra segment.")
    return lines


def growth_note(xs: list[float], per_unit: list[float]) -> str:
    """Say whether a cost grows linearly: the per-unit cost at both ends within 2x."""
    if len(xs) < 2 or not per_unit[0]:
        return "too few points to tell"
    ratio = per_unit[-1] / per_unit[0]
    if 0.5 <= ratio <= 2:
        return f"linear (per-unit cost {ratio:.2f}x from {xs[0]:g} to {xs[-1]:g})"
    return (f"not linear: per-unit cost changes {ratio:.2f}x from {xs[0]:g} to {xs[-1]:g} "
            f"({'fixed costs amortised' if ratio < 1 else 'grows faster than linear'})")


def _driver_text(drv: dict[str, Any]) -> list[str]:
    lines = []
    for mode, res in drv["modes"].items():
        lazy = [x for x in res.get("lazy_touch", []) if "median_s" in x]
        if len(lazy) >= 3:      # from 16 pages: one page also pays the page tables' set-up
            lines.append(
                f"{mode}: lazy mapping first touch: {lazy[0]['median_s'] * 1e6:.0f} µs for one "
                f"page; from {lazy[1]['pages']} to {lazy[-1]['pages']} pages " + growth_note(
                    [x["pages"] for x in lazy[1:]],
                    [x["median_s"] / x["pages"] for x in lazy[1:]]))
        counts = res.get("driver_stats", {})
        if counts and min(counts.values()) >= 0:
            lines.append(f"{mode}: the driver ran {counts['jobs']} jobs; {counts['irq_dma']} "
                         f"DMA interrupts, {counts['poll_completions']} completions found by "
                         f"its poll, {counts['timeouts']} timeouts")
        errs = [f"{op} {_size(c['size'])}: {c['error']}" for op, cells in res["results"].items()
                for c in cells if "errno" in c]
        if errs:
            lines.append(f"{mode}: failed cells: " + "; ".join(errs))
    for mode, message in drv.get("errors", {}).items():
        lines.append(f"{mode}: no figures: {message}")
    return lines


TEXT: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "engine": _engine_text, "driver": _driver_text,
}


def _driver_table(drv: dict[str, Any]) -> str:
    """Return an HTML table per mode: MB/s and x memcpy per op and size."""
    out = []
    for mode, res in drv["modes"].items():
        sizes = res["sizes"]
        base = {c["size"]: c.get("median_s") for c in res["results"]["memcpy"]}
        head = "".join(f"<th>{_size(s)}</th>" for s in sizes)
        rows = []
        for op, cells in res["results"].items():
            tds = []
            for c in cells:
                if "median_s" in c:
                    rate = _rate_of(c["size"], c["median_s"]) / 1e6
                    ref = base.get(c["size"])
                    ratio = f" <small>({ref / c['median_s']:.2f}x)</small>" \
                        if ref and op != "memcpy" else ""
                    tds.append(f"<td>{rate:.0f}{ratio}</td>")
                else:
                    what = c.get("error") or c.get("skipped", "")
                    tds.append(f"<td title='{html.escape(what)}'>-</td>")
            rows.append(f"<tr><th>{html.escape(op)}</th>{''.join(tds)}</tr>")
        out.append(f"<h3>{html.escape(mode)}: MB/s (x guest memcpy)</h3>"
                   f"<table><tr><th>op</th>{head}</tr>{''.join(rows)}</table>")
    return "".join(out)


def render_html(data: dict[str, Any]) -> str:
    """Return the self-contained HTML report of a results file's data."""
    m = data["machine"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>qgpu benchmarks</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}svg{max-width:100%;height:auto}"
        ".err{color:#a00}</style></head><body>",
        "<h1>qgpu benchmarks</h1>",
        f"<p>{html.escape(data['created'])} · commit {html.escape(m.get('commit', '')[:12])}"
        f"{' (with local changes)' if m.get('commit_dirty') else ''} · "
        f"{html.escape(m.get('cpu_model', ''))}, {m.get('cpus')} CPUs, "
        f"{m.get('memory_bytes', 0) / (1 << 30):.0f} GiB · host "
        f"{html.escape(m.get('host_kernel', ''))}"
        f" · {html.escape(m.get('qemu', ''))}</p>",
        f"<p><b>What the numbers mean.</b> {html.escape(TCG_NOTE)}</p>",
    ]
    for name, heading in SECTIONS.items():
        if name not in data["sections"] and name not in data["errors"]:
            continue
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        secs = data["seconds"].get(name)
        if secs is not None:
            parts.append(f"<p><small>measured in {secs:.0f} s</small></p>")
        if name in data["errors"]:
            parts.append(f"<p class='err'>Failed: {html.escape(data['errors'][name])}</p>")
            continue
        section = data["sections"][name]
        text = TEXT.get(name)
        parts.extend(f"<p>{html.escape(line)}</p>" for line in (text(section) if text else []))
        parts.extend(PLOTS[name](section))
        if name == "driver":
            parts.append(_driver_table(section))
    parts.append("<h2>Every figure</h2><p>The <code>figures</code> map of results.json, which "
                 "<code>make bench-compare OLD=... NEW=...</code> compares.</p><table>"
                 "<tr><th>figure</th><th>value</th><th>unit</th><th>better</th>"
                 "<th>kind</th></tr>")
    for key, f in sorted(data["figures"].items()):
        parts.append(f"<tr><th>{html.escape(key)}</th><td>{f['value']:.4g}</td>"
                     f"<td>{f['unit']}</td><td>{f['better']}</td>"
                     f"<td>{f.get('kind', 'primary')}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(data: dict[str, Any], path: Path) -> None:
    """Render the report of ``data`` into ``path``."""
    import matplotlib
    matplotlib.use("Agg")   # no display: render to files only
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data))


def summary(data: dict[str, Any]) -> list[str]:
    """Return the terminal summary: the headline ratios of each section."""
    out = []
    figs = data["figures"]
    eng = sorted((int(k.split("/")[2]), f["value"]) for k, f in figs.items()
                 if k.startswith("engine/to_vram/") and k.endswith("/engine_vs_memcpy"))
    if eng:
        big = [v for s, v in eng if s >= 64 * KiB]
        out.append("engine, copy to VRAM / host memcpy: " + ", ".join(
            f"{_size(s)} {v:.2f}x" for s, v in eng)
            + (f"  (min from 64 KiB: {min(big):.2f}x; goal 0.9x)" if big else ""))
    for mode in data["sections"].get("driver", {}).get("modes", {}):
        row = [(op, figs.get(f"driver/{mode}/{op}/{MiB}/vs_memcpy"))
               for op in ("copy_user_to", "copy_user_from", "copy_bo_to", "fill")]
        lat = figs.get(f"driver/{mode}/latency/fill_4k_fence/median")
        out.append(f"driver, {mode}, 1 MiB x guest memcpy: " + ", ".join(
            f"{op} {v['value']:.2f}x" for op, v in row if v)
            + (f"; 4 KiB fill to fence {lat['value'] * 1e6:.0f} us" if lat else ""))
    if "guest/writes/vram_wc_vs_ram" in figs:
        out.append(f"guest writes to WC VRAM / own RAM: "
                   f"{figs['guest/writes/vram_wc_vs_ram']['value']:.2f}x")
    if "restore/speedup" in figs:
        out.append(f"restore {figs['restore/restore']['value']:.3f} s vs cold boot "
                   f"{figs['restore/boot']['value']:.2f} s: "
                   f"{figs['restore/speedup']['value']:.1f}x faster")
    if "restore/ssh_connect" in figs:
        out.append(f"SSH on a reverted guest, Nagle off / on: connect + command "
                   f"{figs['restore/ssh_connect']['value']:.3f} / "
                   f"{figs['restore/ssh_connect_nagle']['value']:.3f} s, a command "
                   f"{figs['restore/ssh_command']['value']:.3f} / "
                   f"{figs['restore/ssh_command_nagle']['value']:.3f} s")
    for name, message in data["errors"].items():
        out.append(f"{name}: FAILED: {message}")
    return out
