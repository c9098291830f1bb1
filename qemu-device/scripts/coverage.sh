#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Line and branch coverage of the device's own sources by a test command run
# against the coverage build of QEMU (build-qemu.sh ... coverage).
#
# Usage: coverage.sh BUILD_DIR OUT_DIR GOAL -- COMMAND...
#   BUILD_DIR  the coverage build (its .gcno/.gcda files)
#   OUT_DIR    gets one annotated source per device file (*.gcov: each line
#              with its execution count, ##### for lines never run) and
#              summary.txt
#   GOAL       fail when the device's sources have fewer than GOAL % of
#              their lines run
#
# Every QEMU process adds its counts to the .gcda files when it exits
# normally (not after SIGKILL), so the counters are cleared first and the
# command's result does not end the run: a failing test still counts.
set -euo pipefail

build=$(cd "$1" && pwd)     # gcov runs from there: absolute paths
out=$(realpath -m "$2")
goal=$3
shift 3
[[ ${1:-} == -- ]] && shift

# The counters live in the shared build directory: one run at a time.
exec 9> "$build/.coverage.lock"
if ! flock -n 9; then
    echo "coverage: another make coverage uses $build; waiting for it" >&2
    flock 9
fi

# The device's objects, as the build has them now (an object of a source
# that is gone, e.g. the old hw/misc/qgpu.c, may still lie in the folder).
mapfile -t notes < <(python3 -c '
import json, sys
for e in json.load(open(sys.argv[1] + "/compile_commands.json")):
    if "/hw/misc/qgpu/" in e["file"]:
        print(sys.argv[1] + "/" + e["output"].removesuffix(".o") + ".gcno")' "$build" | sort)
for gcno in "${notes[@]}"; do
    [[ -f $gcno ]] || { echo "coverage: no $gcno: is $build a coverage build?" >&2; exit 1; }
done
if (( ${#notes[@]} == 0 )); then
    echo "coverage: no device sources in $build/compile_commands.json" >&2
    exit 1
fi

find "$build" -name '*.gcda' -delete
echo "coverage: running $*"
rc=0
"$@" || rc=$?
if (( rc != 0 )); then
    echo "coverage: the tests failed (exit $rc); coverage of what ran follows" >&2
fi

rm -rf "$out"
mkdir -p "$out"
for gcno in "${notes[@]}"; do
    obj=${gcno%.gcno}
    if [[ ! -f $obj.gcda ]]; then
        echo "coverage: $obj.gcda missing: no QEMU process exited normally" >&2
        exit 1
    fi
    # gcov finds the sources relative to the build directory, writes the
    # annotated sources into the current directory, and prints, per source
    # file, "Lines executed:P% of N" and the branches.
    (cd "$build" && gcov --branch-probabilities --object-directory "$(dirname "$obj")" \
        "$obj.o") >> "$out/gcov.log"
done
# Keep the device's annotated sources. gcov also annotates the headers, once
# per object that includes them, each time overwriting the last: not those.
find "$build" -maxdepth 1 -name 'qgpu*.c.gcov' -exec mv -t "$out" {} +
find "$build" -maxdepth 1 -name '*.gcov' -delete
# A file block starts with "File '<path>'" and ends at a blank line; the
# device's files are its .c files (a header's few inline lines would be
# counted once per object that includes it).
device_blocks='/^File / { file = $2; gsub(/\x27/, "", file); keep = file ~ /\/hw\/misc\/qgpu\/[^\/]*\.c$/ }
               /^$/ { keep = 0 }'
awk "$device_blocks"'
     keep && /^(Lines executed|Branches executed|Taken at least once):/ { print file ": " $0 }' \
    "$out/gcov.log" > "$out/summary.txt"
read -r run total < <(awk "$device_blocks"'
    keep && /^Lines executed:/ { split($2, a, "[:%]"); n = $4; t += n; r += a[2] * n / 100 }
    END { printf "%d %d\n", r + 0.5, t }' "$out/gcov.log")

echo "coverage: device sources, by the command above:"
sed 's/^/  /' "$out/summary.txt"
pct=$(awk -v r="$run" -v t="$total" 'BEGIN { printf "%.1f", t ? 100 * r / t : 0 }')
echo "coverage: $run of $total lines run ($pct %), goal $goal %; annotated sources in $out"
awk -v p="$pct" -v g="$goal" 'BEGIN { exit !(p + 0 >= g + 0) }' || {
    echo "coverage: below the goal of $goal % of lines" >&2
    exit 1
}
exit "$rc"
