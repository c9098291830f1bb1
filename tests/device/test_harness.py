"""The device suite's own harness: what makes a sanitizer report fail a test."""

from __future__ import annotations

from qgpu.process import sanitizer_report

ASAN_LOG = """\
qemu-system-x86_64 -machine q35 -accel qtest ...
[R +0.031505] readw 0xb0100004
=================================================================
==1234==ERROR: AddressSanitizer: heap-use-after-free on address 0x602000001234
READ of size 4 at 0x602000001234 thread T0
    #0 0x55d0 in qgpu_trace_record ../qemu-src/hw/misc/qgpu.c:412
"""
UBSAN_LOG = """\
[S +0.1] OK
../qemu-src/hw/i386/amd_iommu.c:193:33: runtime error: shift exponent 64 is too large
    #0 0x55d0 in amdvi_setevent_bits ../qemu-src/hw/i386/amd_iommu.c:193
"""
LSAN_LOG = """\
==99==ERROR: LeakSanitizer: detected memory leaks
Direct leak of 64 byte(s) in 1 object(s) allocated from:
"""


def test_sanitizer_reports_are_found_from_their_first_line() -> None:
    asan = sanitizer_report(ASAN_LOG)
    assert asan is not None and asan.startswith("==1234==ERROR: AddressSanitizer: heap-use")
    assert "qgpu_trace_record" in asan
    ubsan = sanitizer_report(UBSAN_LOG)
    assert ubsan is not None and ubsan.startswith("../qemu-src/hw/i386/amd_iommu.c:193:33")
    lsan = sanitizer_report(LSAN_LOG)
    assert lsan is not None and "Direct leak" in lsan


def test_a_clean_log_has_no_report() -> None:
    assert sanitizer_report("qemu-system-x86_64: terminating on signal 15\n"
                            "[R +0.1] readl 0xe0000000\n") is None
