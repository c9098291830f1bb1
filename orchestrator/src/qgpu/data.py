"""Data helpers that mirror the guest tools, so the host can check their work.

``fnv1a64`` is the checksum ``qgpu-tool`` prints; ``fill_pattern`` is what a
FILL descriptor (or ``qgpu_pattern_fill``) writes; ``last_json_object`` reads
the result line the guest tools print.
"""

from __future__ import annotations

import json
from typing import Any

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes, h: int = FNV_OFFSET_BASIS) -> int:
    """Return the 64-bit FNV-1a hash of ``data`` (the guest tools' checksum)."""
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFF_FFFF_FFFF_FFFF
    return h


def fill_pattern(pattern: int, length: int) -> bytes:
    """Return ``length`` bytes of the 32-bit ``pattern`` repeated little-endian."""
    word = pattern.to_bytes(4, "little")
    return (word * (length // 4 + 1))[:length]


def last_json_object(output: str) -> dict[str, Any] | None:
    """Return the last line of ``output`` that is a JSON object, or None.

    qgpu-tool, qgpu-test and qgpu-bench print one JSON object per result.
    """
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            obj: dict[str, Any] = json.loads(line)
            return obj
    return None
