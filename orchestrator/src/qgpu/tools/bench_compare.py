"""Compare two ``make bench`` results files: NEW against OLD, figure by figure, as ratios.

Run with ``make bench-compare OLD=old.json NEW=build/bench/results.json`` or
``python -m qgpu.tools.bench_compare OLD NEW``. For each figure in both
files it prints NEW/OLD and whether that is better or worse (each figure
says which direction is better), and per group (engine, driver/<mode>,
guest, restore) the geometric mean of the improvements of its primary
figures: not of baselines (host or guest memcpy, the stock kernel's boot),
which measure the machine, nor of ratios and other views of a figure, which
would count it twice. Figures that moved
less than ``--threshold`` are counted as unchanged and listed only with
``--all``. Machines are noisy: run both on the same machine, and compare a
run with a second run of the same code first (on the 2-core machine this was
written on, two runs of one commit differed by up to 1.2x in a group's mean,
by more in single small-size figures).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qgpu.errors import QgpuError
from qgpu.tools.bench_report import load


def improvement(old: float, new: float, better: str) -> float | None:
    """Return how much better NEW is (>1 better, <1 worse), or None if not comparable."""
    if old <= 0 or new <= 0:
        return None
    return new / old if better == "higher" else old / new


def group_of(key: str) -> str:
    """Return a figure's group: ``driver/<mode>`` for driver figures, else its first part."""
    parts = key.split("/")
    return "/".join(parts[:2]) if parts[0] == "driver" else parts[0]


def compare(old: dict[str, Any], new: dict[str, Any],
            threshold: float = 0.1) -> dict[str, Any]:
    """Return the comparison: per figure, per group, and the figures only one file has."""
    fo, fn = old["figures"], new["figures"]
    rows = []
    groups: dict[str, list[float]] = {}
    for key in sorted(fo.keys() & fn.keys()):
        a, b = fo[key], fn[key]
        imp = improvement(float(a["value"]), float(b["value"]), b["better"])
        if imp is None:
            continue
        verdict = ("better" if imp > 1 + threshold else
                   "worse" if imp < 1 / (1 + threshold) else "same")
        rows.append({"figure": key, "old": a["value"], "new": b["value"], "unit": b["unit"],
                     "ratio": b["value"] / a["value"], "improvement": imp, "verdict": verdict,
                     "kind": b.get("kind", "primary")})
        if b.get("kind", "primary") == "primary":
            groups.setdefault(group_of(key), []).append(imp)
    means = {g: math.exp(sum(math.log(v) for v in vals) / len(vals))
             for g, vals in groups.items()}
    return {"rows": rows, "groups": means, "only_old": sorted(fo.keys() - fn.keys()),
            "only_new": sorted(fn.keys() - fo.keys())}


def _fmt(value: float, unit: str) -> str:
    if unit == "B/s":
        return f"{value / 1e6:.1f} MB/s"
    if unit == "s":
        return (f"{value * 1e6:.2f} µs" if value < 1e-3 else
                f"{value * 1e3:.3f} ms" if value < 1 else f"{value:.2f} s")
    if unit == "B":
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value:.3f}{unit}"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the comparison of two results files."""
    parser = argparse.ArgumentParser(prog="qgpu-bench-compare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="results.json of the baseline")
    parser.add_argument("new", type=Path, help="results.json to compare with it")
    parser.add_argument("--threshold", type=float, default=0.1,
                        help="relative change below which a figure counts as unchanged "
                             "(default 0.1)")
    parser.add_argument("--all", action="store_true", help="list unchanged figures too")
    args = parser.parse_args(argv)
    try:
        old, new = load(args.old), load(args.new)
    except QgpuError as exc:
        print(f"qgpu-bench-compare: {exc}", file=sys.stderr)
        return 2
    result = compare(old, new, args.threshold)
    mo, mn = old["machine"], new["machine"]
    print(f"OLD {args.old}: {old['created']}, commit {mo.get('commit', '')[:12]}, "
          f"{mo.get('cpu_model', '?')}")
    print(f"NEW {args.new}: {new['created']}, commit {mn.get('commit', '')[:12]}, "
          f"{mn.get('cpu_model', '?')}")
    if (mo.get("cpu_model"), mo.get("cpus")) != (mn.get("cpu_model"), mn.get("cpus")):
        print("warning: the two runs are from different machines: ratios compare machines too",
              file=sys.stderr)
    shown = [r for r in result["rows"] if args.all or r["verdict"] != "same"]
    if shown:
        width = max(len(r["figure"]) for r in shown)
        print(f"\n{'figure':<{width}}  {'OLD':>14}  {'NEW':>14}  {'NEW/OLD':>8}  verdict")
        for r in shown:
            print(f"{r['figure']:<{width}}  {_fmt(r['old'], r['unit']):>14}  "
                  f"{_fmt(r['new'], r['unit']):>14}  {r['ratio']:8.3f}  {r['verdict']}"
                  + (f" ({r['kind']})" if r["kind"] != "primary" else ""))
    counts = {v: sum(r["verdict"] == v for r in result["rows"]) for v in ("better", "worse",
                                                                          "same")}
    print(f"\n{len(result['rows'])} figures compared: {counts['better']} better, "
          f"{counts['worse']} worse, {counts['same']} within {args.threshold:.0%}")
    print("geometric mean of the improvement of each group's primary figures "
          "(>1: NEW is better):")
    for group, mean in sorted(result["groups"].items()):
        print(f"  {group:<24} {mean:6.3f}")
    for what, keys in (("only in OLD", result["only_old"]), ("only in NEW", result["only_new"])):
        if keys:
            print(f"{len(keys)} figures {what}: {', '.join(keys[:8])}"
                  + (" ..." if len(keys) > 8 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
