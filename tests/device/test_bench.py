"""make bench's machinery: the engine benchmark on a qtest machine, and the results file,
report and comparison built from results (synthetic here, so that every branch is
known: failed cells, skipped cells, a failed section)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qgpu.errors import QgpuError
from qgpu.tools import bench, bench_all, bench_compare, bench_report

KiB, MiB = 1 << 10, 1 << 20


def test_engine_benchmark_times_the_engine_apart_from_the_harness() -> None:
    res = bench.measure_engine([64 * KiB, MiB], repeat=2, edu_max=64 * KiB)
    assert [r["size"] for r in res["rows"]] == [64 * KiB, MiB]
    for row in res["rows"]:
        assert row["bytes"] == row["size"] * row["descs"]
        for op in bench.OPS:
            wall, engine = row[op]["wall_s"], row[op]["engine_s"]
            # stat-engine-busy-ns counts the engine's runs inside the doorbell-to-idle span
            assert 0 < engine["min"] <= engine["median"] <= engine["max"], (op, row)
            assert engine["median"] < wall["median"], (op, row)
    assert "edu_s" in res["rows"][0] and "edu_s" not in res["rows"][1]
    assert [r["segments"] for r in res["sg_growth"]] == list(bench.SG_SEGMENTS)
    assert all(r["engine_s"]["median"] > 0 for r in res["sg_growth"])
    figs = bench_report.figures({"engine": res})
    assert figs[f"engine/to_vram/{MiB}/engine"]["unit"] == "B/s"
    assert figs["engine/sg_1MiB/4096_segments"]["better"] == "lower"


def _cell(size: int, seconds: float) -> dict[str, Any]:
    return {"size": size, "n": 5, "inner": 1, "median_s": seconds, "min_s": seconds * 0.9,
            "max_s": seconds * 1.5}


def synthetic_sections() -> dict[str, Any]:
    """Plausible results of every section, with a failed and a skipped cell."""
    sizes = [4 * KiB, 64 * KiB, MiB]
    spread = {"median": 1e-3, "min": 9e-4, "max": 2e-3}
    engine = {"repeat": 2, "rows": [
        {"size": s, "descs": 4, "bytes": 4 * s, "host_memcpy_s": spread,
         **{op: {"wall_s": {k: v * 3 for k, v in spread.items()}, "engine_s": spread}
            for op in bench.OPS}} for s in sizes],
        "sg_growth": [{"segments": n, "length": MiB,
                       "engine_s": {"median": 1e-4 * n, "min": 1e-4 * n, "max": 1e-4 * n}}
                      for n in bench.SG_SEGMENTS],
        "main_loop_hold": {"descs": 64, "length": 4096, "repeat": 9, "idle_read_s": spread,
                           "rows": []}}
    results = {op: [_cell(s, s / 1e9) for s in sizes] for op in ("memcpy", "copy_user_to",
                                                                  "fill")}
    results["copy_bo_to"] = [_cell(4 * KiB, 1e-5), _cell(64 * KiB, 1e-4),
                             {"size": MiB, "skipped": "larger than the largest buffer object"}]
    results["copy_user_from"] = [_cell(4 * KiB, 1e-5), _cell(64 * KiB, 1e-4),
                                 {"size": MiB, "errno": 12, "error": "Cannot allocate memory"}]
    lat = {"n": 200, "median_s": 4e-5, "p99_s": 4e-3, "min_s": 3e-5, "max_s": 5e-3,
           "samples_us": [30.0 + i for i in range(200)]}
    mode = {"ok": True, "sizes": sizes, "results": results, "mode": "direct",
            "kernel": "stock", "release": "6.1", "accel": "tcg", "boot_s": 4.0,
            "latency": {"fill_4k_fence": lat, "copy_user_4k": lat},
            "submitters": [{"threads": n, "bytes": n * 16 * MiB, "seconds": 0.1 * n ** 0.5}
                           for n in (1, 2, 4)],
            "driver_stats": {"jobs": 10, "irq_dma": 9, "poll_completions": 1, "timeouts": 0},
            "lazy_touch": [{"pages": p, "n": 3, "median_s": 2e-5 * p, "min_s": 2e-5 * p,
                            "max_s": 3e-5 * p} for p in (1, 16, 256)]}
    driver = {"kernel": "stock", "modes": {"direct": mode},
              "errors": {"virtio-iommu": "qgpu-bench dma failed: boom"}}
    guest = {"mode": "direct", "accel": "tcg", "baseline": "stock",
             "boots": {"stock": {"release": "6.1", "seconds": [4.0, 4.2], "goal_s": 5.0},
                       "qgpu": {"release": "6.12", "seconds": [2.0, 2.1], "goal_s": 1.0}},
             "mappings": {"ok": True, "bytes": MiB, "rounds": 5, "ram_mb_s": 1000.0,
                          "vram_wc_mb_s": 900.0, "vram_vs_ram": 0.9,
                          "lazy_first_touch_mb_s": 100.0}}
    restore = {"kernel": "stock", "mode": "direct", "accel": "tcg", "boot_s": [4.0, 4.4],
               "restore_s": [0.2, 0.3], "revert_s": [0.04, 0.06],
               "private_bytes": [30 * MiB, 31 * MiB],
               "ssh": {"nodelay_connect_s": [0.06, 0.08], "nagle_connect_s": [0.14, 0.16],
                       "nodelay_command_s": [0.01, 0.01], "nagle_command_s": [0.05, 0.06]},
               "template": "t", "state_bytes": 100_000, "ram_bytes_used": 80 * MiB,
               "memory": 1024 * MiB, "goal_s": 0.15, "goal_ratio": 14.0}
    return {"engine": engine, "driver": driver, "guest": guest, "restore": restore}


def test_results_file_and_report_hold_every_section(tmp_path: Path) -> None:
    sections = synthetic_sections()
    results = bench_report.Results(tmp_path / "results.json", {"cpu_model": "test cpu",
                                                                "cpus": 2})
    for name, data in sections.items():
        results.add(name, data, 1.0)
    results.fail("extra", "it broke: QEMU said no", 2.0)
    saved = bench_report.load(tmp_path / "results.json")
    assert saved["sections"] == json.loads(json.dumps(sections))
    assert saved["errors"] == {"extra": "it broke: QEMU said no"}
    figs = saved["figures"]
    assert figs[f"driver/direct/copy_user_to/{MiB}"]["value"] == pytest.approx(1e9)
    assert figs[f"driver/direct/copy_user_to/{MiB}/vs_memcpy"]["value"] == pytest.approx(1.0)
    assert f"driver/direct/copy_user_from/{MiB}" not in figs        # its cell failed
    assert figs["restore/speedup"]["value"] == pytest.approx(4.2 / 0.25)
    assert figs["restore/revert_speedup"]["value"] == pytest.approx(0.25 / 0.05)
    assert figs["restore/ssh_connect_speedup"]["value"] == pytest.approx(0.15 / 0.07)
    assert figs["restore/ssh_command_nagle"]["kind"] == "baseline"
    assert figs["guest/boot/qgpu"]["better"] == "lower"

    saved.setdefault("created", "now")
    html = bench_report.render_html(saved)
    # Self-contained: inline SVG plots, nothing fetched, no script.
    assert html.count("<svg") >= 7
    assert not re.search(r"(src|href)=['\"]https?:", html) and "<script" not in html
    assert "copy_user_from 1 MiB: Cannot allocate memory" in html
    assert "virtio-iommu: no figures: qgpu-bench dma failed: boom" in html
    assert "test cpu" in html and "Under TCG" in html
    summary = bench_report.summary(saved)
    assert any(line.startswith("driver, direct, 1 MiB x guest memcpy: copy_user_to 1.00x")
               for line in summary), summary
    assert "extra: FAILED: it broke: QEMU said no" in summary
    assert ("SSH on a reverted guest, Nagle off / on: connect + command 0.070 / 0.150 s, "
            "a command 0.010 / 0.055 s") in summary


def test_load_refuses_what_is_not_a_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 99}')
    with pytest.raises(QgpuError, match="not a qgpu bench results file"):
        bench_report.load(bad)
    with pytest.raises(QgpuError, match="cannot read bench results"):
        bench_report.load(tmp_path / "missing.json")


def test_growth_note_tells_linear_from_not() -> None:
    assert bench_report.growth_note([1, 256], [1.0, 1.5]).startswith("linear")
    assert "fixed costs amortised" in bench_report.growth_note([1, 256], [10.0, 1.0])
    assert "grows faster than linear" in bench_report.growth_note([1, 256], [1.0, 3.0])


def _results(figures: dict[str, tuple[float, str, str]],
             kinds: dict[str, str] | None = None) -> dict[str, Any]:
    return {"schema": bench_report.SCHEMA, "created": "now", "machine": {},
            "figures": {k: {"value": v, "unit": u, "better": b,
                            "kind": (kinds or {}).get(k, "primary")}
                        for k, (v, u, b) in figures.items()}}


def test_compare_knows_which_direction_is_better() -> None:
    kinds = {"engine/memcpy": "baseline", "engine/a_vs_memcpy": "derived"}
    old = _results({"engine/a": (100.0, "B/s", "higher"), "driver/direct/lat": (1.0, "s", "lower"),
                    "driver/direct/x": (1.0, "x", "higher"), "restore/gone": (1.0, "s", "lower"),
                    "engine/memcpy": (1.0, "B/s", "higher"),
                    "engine/a_vs_memcpy": (100.0, "x", "higher")}, kinds)
    new = _results({"engine/a": (200.0, "B/s", "higher"), "driver/direct/lat": (2.0, "s", "lower"),
                    "driver/direct/x": (1.05, "x", "higher"), "guest/new": (1.0, "s", "lower"),
                    "engine/memcpy": (10.0, "B/s", "higher"),
                    "engine/a_vs_memcpy": (20.0, "x", "higher")}, kinds)
    res = bench_compare.compare(old, new, threshold=0.1)
    verdicts = {r["figure"]: (r["verdict"], r["improvement"]) for r in res["rows"]}
    assert verdicts["engine/a"] == ("better", 2.0)
    assert verdicts["driver/direct/lat"] == ("worse", 0.5)
    assert verdicts["driver/direct/x"][0] == "same"
    assert verdicts["engine/memcpy"] == ("better", 10.0)   # compared, but a baseline:
    assert res["groups"]["engine"] == pytest.approx(2.0)    # not in the group's mean
    assert res["groups"]["driver/direct"] == pytest.approx((0.5 * 1.05) ** 0.5)
    assert res["only_old"] == ["restore/gone"] and res["only_new"] == ["guest/new"]


def test_compare_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old, new, bad = tmp_path / "old.json", tmp_path / "new.json", tmp_path / "bad.json"
    old.write_text(json.dumps(_results({"engine/a": (100e6, "B/s", "higher")})))
    new.write_text(json.dumps(_results({"engine/a": (50e6, "B/s", "higher")})))
    bad.write_text("not json")
    assert bench_compare.main([str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"engine/a\s+100\.0 MB/s\s+50\.0 MB/s\s+0\.500\s+worse", out), out
    assert bench_compare.main([str(bad), str(new)]) == 2
    assert "cannot read bench results" in capsys.readouterr().err


def test_make_bench_records_a_failed_section_and_reports_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    sections = synthetic_sections()
    restore_unreadable = dict(sections["restore"], boot_s=[], restore_s=[])

    def engine_fails() -> dict[str, Any]:
        raise QgpuError("QEMU said no")

    monkeypatch.setattr(bench_all, "_sections", lambda args, progress: {
        "engine": engine_fails, "driver": lambda: sections["driver"],
        "guest": lambda: sections["guest"], "restore": lambda: restore_unreadable})
    assert bench_all.main(["--out", str(tmp_path)]) == 1
    saved = bench_report.load(tmp_path / "results.json")
    assert saved["errors"]["engine"] == "QEMU said no"
    assert saved["errors"]["restore"].startswith("StatisticsError")  # its figures: no data
    assert saved["errors"]["driver/virtio-iommu"] == "qgpu-bench dma failed: boom"
    assert set(saved["sections"]) == {"driver", "guest"}
    assert "Failed: QEMU said no" in (tmp_path / "report.html").read_text()
    assert "engine: FAILED: QEMU said no" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_all.main(["--runs", "0"])
    assert "--runs: must be at least 1, not 0" in capsys.readouterr().err
