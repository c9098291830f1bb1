#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Compile the device's own sources again with -Werror.

QEMU is configured with --disable-werror (its own sources are not ours to
fix, and new compilers warn about them), so a warning in the device would
scroll past in a build log. This compiles each hw/misc/qgpu/ file the way
the build did (its command from compile_commands.json) with warnings as
errors, into a scratch object (not -fsyntax-only: warnings such as "defined
but not used" or "may be used uninitialized" come from later passes), and
fails if any has one.

Usage: check-werror.py BUILD_DIR
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

DEVICE_DIR = "/hw/misc/qgpu/"
STAMP = ".qgpu-werror"


def check_command(command: str, scratch: Path) -> list[str]:
    """The build's command for one file, with -Werror, writing ``scratch``."""
    out: list[str] = []
    args = iter(shlex.split(command))
    for arg in args:
        if arg in ("-MQ", "-MF", "-o"):
            next(args, None)        # and its operand: the build's own files stay
        elif arg != "-MD":
            out.append(arg)
    return [*out, "-Werror", "-o", str(scratch)]


def main() -> int:
    build = Path(sys.argv[1])
    entries = [e for e in json.loads((build / "compile_commands.json").read_text())
               if DEVICE_DIR in e["file"]]
    if not entries:
        print(f"check-werror: no {DEVICE_DIR} sources in {build}/compile_commands.json",
              file=sys.stderr)
        return 1
    # Run again only when a source, a header of ours, a command or this
    # check changed.
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for e in sorted(entries, key=lambda e: e["file"]):
        digest.update(e["command"].encode())
        src = (Path(e["directory"]) / e["file"]).resolve()
        for path in sorted(src.parent.glob("*.[ch]")):
            digest.update(path.read_bytes())
    # A header outside the folder (the ABI header, QEMU's own) is not in the
    # digest, but ninja rebuilds the objects when one changes: an object
    # newer than the stamp means a new check too.
    stamp = build / STAMP
    objects = [Path(e["directory"]) / e["output"] for e in entries]
    if (stamp.exists() and stamp.read_text() == digest.hexdigest()
            and all(o.exists() and o.stat().st_mtime <= stamp.stat().st_mtime
                    for o in objects)):
        return 0
    failed = []
    with tempfile.TemporaryDirectory() as scratch:
        for e in entries:
            run = subprocess.run(check_command(e["command"], Path(scratch) / "check.o"),
                                 cwd=e["directory"], capture_output=True, text=True,
                                 check=False)
            if run.returncode:
                failed.append(e["file"])
                sys.stderr.write(run.stderr)
    if failed:
        print(f"check-werror: warnings in {', '.join(failed)} (the device's own files "
              "build with -Werror)", file=sys.stderr)
        return 1
    stamp.write_text(digest.hexdigest())
    print(f"check-werror: {len(entries)} device sources build without warnings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
