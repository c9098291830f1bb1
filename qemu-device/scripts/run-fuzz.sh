#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Run QEMU's generic fuzzer (libFuzzer, ASan, UBSan) on the qgpu
# configurations for a bounded time, and fail on any crash, hang, leak or
# sanitizer report.
#
# Usage: run-fuzz.sh FUZZER SECONDS OUTDIR SEEDDIR QEMU_SRC [CONFIG...]
#   FUZZER    qemu-fuzz-x86_64 (build-qemu.sh ... fuzz)
#   SECONDS   wall-clock fuzzing time, shared by the configurations; FUZZ_JOBS
#             (environment; default 1) fuzzers run at once, each on one core.
#             FUZZ_BUDGET=fuzzer (environment): SECONDS of one fuzzer's time
#             instead, each configuration fuzzed SECONDS/configurations however
#             many run at once (more jobs: less wall clock, the same fuzzing);
#             with it, FUZZ_MORE_JOBS=FILE:N (environment): N at once from
#             when FILE exists (make test: once its other lane has ended)
#   OUTDIR    corpus/CONFIG (kept and grown from run to run), crashes/CONFIG,
#             logs/CONFIG.log, summary.txt
#   SEEDDIR   the checked-in seed corpus, read by every configuration
#   QEMU_SRC  QEMU's source tree (scripts/oss-fuzz, to turn a crash into a
#             qtest reproducer)
#   CONFIG    generic-fuzz configuration names (generic_fuzz_configs.qgpu);
#             default: all four
#
# For each crash it prints how to rerun it (one line) and writes a qtest
# trace next to it that qemu-system-x86_64 replays without the fuzzer.
set -euo pipefail

fuzzer=$1 seconds=$2 out=$3 seeds=$4 qemu_src=$5
shift 5
configs=("$@")
(( ${#configs[@]} )) || configs=(qgpu qgpu-intel-iommu qgpu-msix-off qgpu-native-hotplug)

[[ -x $fuzzer ]] || { echo "run-fuzz: no fuzzer at $fuzzer (make qemu-fuzz)" >&2; exit 1; }
[[ $seconds =~ ^[0-9]+$ ]] && (( seconds >= ${#configs[@]} )) || {
    echo "run-fuzz: FUZZ_SECONDS must be a whole number of at least ${#configs[@]}" \
         "(one second per configuration), not '$seconds'" >&2; exit 2; }
jobs=${FUZZ_JOBS:-1}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || { echo "run-fuzz: FUZZ_JOBS must be a positive number, not '$jobs'" >&2; exit 2; }
(( jobs <= ${#configs[@]} )) || jobs=${#configs[@]}
# Each configuration gets the same time, JOBS at once: SECONDS of wall clock
# in rounds of JOBS (the leak checks come on top), or SECONDS of one fuzzer's.
rounds=$(( (${#configs[@]} + jobs - 1) / jobs ))
case ${FUZZ_BUDGET:-wall} in
    wall) per=$(( seconds / rounds )) ;;
    fuzzer) per=$(( seconds / ${#configs[@]} )) ;;
    *) echo "run-fuzz: FUZZ_BUDGET must be wall or fuzzer, not '$FUZZ_BUDGET'" >&2; exit 2 ;;
esac
# More jobs once FILE exists: the cores another job held are free. Only with a
# fuzzer budget, where the job count does not change what each configuration gets.
more_file= more_jobs=$jobs
if [[ -n ${FUZZ_MORE_JOBS:-} ]]; then
    more_file=${FUZZ_MORE_JOBS%:*} more_jobs=${FUZZ_MORE_JOBS##*:}
    [[ $FUZZ_MORE_JOBS == *:* && -n $more_file && $more_jobs =~ ^[1-9][0-9]*$ ]] || {
        echo "run-fuzz: FUZZ_MORE_JOBS must be FILE:JOBS, not '$FUZZ_MORE_JOBS'" >&2; exit 2; }
    [[ ${FUZZ_BUDGET:-wall} == fuzzer ]] || {
        echo "run-fuzz: FUZZ_MORE_JOBS needs FUZZ_BUDGET=fuzzer (with a wall-clock budget," \
             "the job count sets each configuration's time)" >&2; exit 2; }
    (( more_jobs >= jobs )) || {
        echo "run-fuzz: FUZZ_MORE_JOBS's count ($more_jobs) is fewer than FUZZ_JOBS ($jobs)" >&2
        exit 2; }
    (( more_jobs <= ${#configs[@]} )) || more_jobs=${#configs[@]}
fi
at_once() {     # how many fuzzers may run now
    if [[ -n $more_file && -e $more_file ]]; then echo "$more_jobs"; else echo "$jobs"; fi
}
most_at_once=$jobs cap=$jobs

# Reports name functions and lines (llvm-16: make qemu-fuzz installs it).
export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/usr/lib/llvm-16/bin/llvm-symbolizer}
# Every sanitizer report is fatal: UBSan by default only prints. Leak checks
# after every input cost 3.4x the executions, so fuzzing runs without them and
# then every input of the corpus runs once more with LeakSanitizer on.
ASAN_BASE=${ASAN_BASE:-abort_on_error=1:symbolize=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}
# libFuzzer options: a descriptor program must finish in 10 s and 2 GiB.
LIBFUZZER_OPTS=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -max_len=4096)
# Addresses and values worth trying (the VT-d window, MSI, the IOAPIC, ...).
dict=$(dirname "$seeds")/qgpu.dict
[[ -f $dict ]] && LIBFUZZER_OPTS+=(-dict="$dict")

mkdir -p "$out/logs"
summary=$out/summary.txt
: > "$summary"
status=0
total_execs=0

reproduce() {   # CONFIG CRASH: a qtest trace beside CRASH, and how to replay it
    local cfg=$1 crash=$2 trace=$2.qtest args
    QTEST_LOG=1 FUZZ_SERIALIZE_QTEST=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
        "$fuzzer" --fuzz-target="generic-fuzz-$cfg" "$crash" 2> "$trace.raw" >/dev/null || true
    # The machine's arguments, from a run without input (printed on stdout,
    # which a crashing run loses); the replay talks qtest on stdin instead.
    args=$(QTEST_LOG=1 ASAN_OPTIONS=detect_leaks=0 "$fuzzer" --fuzz-target="generic-fuzz-$cfg" \
               -runs=0 </dev/null 2>/dev/null |
           sed -n 's/^Starting [^ ]* with Arguments: //p' | head -1 |
           sed 's| -qtest /dev/null||')
    if python3 "$qemu_src/scripts/oss-fuzz/reorder_fuzzer_qtest_trace.py" "$trace.raw" \
            > "$trace" 2>/dev/null && [[ -s $trace ]] && [[ -n $args ]]; then
        echo "    replay without the fuzzer: build/bin/qemu-system-x86_64 $args" \
             "-qtest stdio < $trace"
    fi
    rm -f "$trace.raw"
}

fuzz_one() {     # CONFIG: fuzz, then the leak check; exit status in logs/CONFIG.rc
    local cfg=$1 rc=0
    local corpus=$out/corpus/$cfg crashes=$out/crashes/$cfg log=$out/logs/$cfg.log
    ASAN_OPTIONS=$ASAN_BASE:detect_leaks=0 \
        "$fuzzer" --fuzz-target="generic-fuzz-$cfg" "${LIBFUZZER_OPTS[@]}" \
        -max_total_time="$per" -artifact_prefix="$crashes/" \
        "$corpus" "$seeds" > "$log" 2>&1 || rc=$?
    if (( rc == 0 )); then      # the leak check: the corpus once more, LSan on
        ASAN_OPTIONS=$ASAN_BASE:detect_leaks=1 \
            "$fuzzer" --fuzz-target="generic-fuzz-$cfg" "${LIBFUZZER_OPTS[@]}" -runs=0 \
            -artifact_prefix="$crashes/" "$corpus" "$seeds" >> "$log" 2>&1 || rc=$?
    fi
    echo "$rc" > "$out/logs/$cfg.rc"
}

for cfg in "${configs[@]}"; do
    mkdir -p "$out/corpus/$cfg" "$out/crashes/$cfg"
    rm -f "$out/logs/$cfg.rc"
    touch "$out/crashes/$cfg/.start"    # what this run finds is newer (earlier finds stay)
    # (Counting running jobs, not trusting `wait -n` alone: it misses a job
    # that ended while a foreground command ran. Until FILE exists, polling.)
    while (( $(jobs -rp | wc -l) >= (cap = $(at_once)) )); do
        if [[ -n $more_file && ! -e $more_file ]]; then sleep 1; else wait -n || true; fi
    done
    (( cap <= most_at_once )) || most_at_once=$cap
    echo "run-fuzz: generic-fuzz-$cfg for ${per} s (log $out/logs/$cfg.log)"
    fuzz_one "$cfg" &
done
wait

for cfg in "${configs[@]}"; do
    corpus=$out/corpus/$cfg crashes=$out/crashes/$cfg log=$out/logs/$cfg.log
    rc=$(cat "$out/logs/$cfg.rc" 2>/dev/null || echo "?")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | head -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | head -1)
    size=$(find "$corpus" -type f | wc -l)
    line=$(printf '%-22s %9s execs %7s exec/s %5s inputs in corpus' \
                  "$cfg" "${execs:-?}" "${rate:-?}" "$size")
    total_execs=$(( total_execs + ${execs:-0} ))
    if [[ $rc != 0 ]] || [[ -z $execs ]]; then
        status=1
        line+="  FAILED (libFuzzer exit $rc)"
        echo "run-fuzz: generic-fuzz-$cfg failed (exit $rc); the report:" >&2
        grep -m1 -B2 -A30 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|SUMMARY:|==ERROR' \
            "$log" >&2 || tail -40 "$log" >&2
        find "$crashes" -type f -newer "$crashes/.start" ! -name '*.qtest' ! -name .start |
        while read -r crash; do
            echo "    rerun: $fuzzer --fuzz-target=generic-fuzz-$cfg $crash" >&2
            reproduce "$cfg" "$crash" >&2
        done
    fi
    echo "$line" | tee -a "$summary"
done
echo "run-fuzz: $total_execs executions in all (up to $most_at_once at once); summary in $summary" |
    tee -a "$summary"
exit $status
