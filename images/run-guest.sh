#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Boot the qgpu test guest under QEMU (TCG, q35) with the qgpu device behind a
# PCIe root port, user-mode networking with SSH forwarded to a loopback port,
# and QMP on a unix socket.
#
#   run-guest.sh [options]                 interactive: serial console on this
#                                          terminal (Ctrl-A X quits QEMU);
#                                          leaving the guest shell powers off
#   run-guest.sh --cmd 'qgpu-boot-check'   run a command in the guest, power
#                                          off, exit with the command's status
#
# Options:
#   --mode direct|swiotlb|iommu|virtio-iommu  DMA setup (default direct)
#                         swiotlb: guest swiotlb=force
#                         iommu:   intel-iommu (intremap, caching-mode) + guest
#                                  intel_iommu=on iommu=nopt
#                         virtio-iommu: virtio-iommu-pci (ACPI VIOT) + guest
#                                  iommu.passthrough=0
#   --cmd CMD             run CMD (sh -c) in the guest instead of the shell;
#                         exit status = CMD's status
#   --timeout SEC         kill QEMU after SEC seconds (exit 124); default 600
#                         with --cmd, none otherwise
#   --vram-backend FILE   VRAM on memory-backend-file,share=on at FILE
#   --vram-size SIZE      VRAM size (power of two, default 64M)
#   --ssh-port PORT       host port forwarded to guest port 22 (default: free)
#   --qmp PATH            QMP unix socket (default RUN_DIR/qmp.sock)
#   --serial-log FILE     also write the console output to FILE
#   --run-dir DIR         QMP socket, pid file, logs (default: a temporary
#                         directory under $OUT/run, removed at exit)
#   --append ARGS         extra guest kernel command line (repeatable)
#   --qgpu-opts OPTS      extra -device qgpu options, e.g. msix=off
#   --qemu-arg ARG        extra QEMU argument (repeatable)
#   --smp N / --mem SIZE  vCPUs (default 2) / RAM (default 1G)
#   --cpu MODEL           default qemu64,+rdrand (RDRAND: the guest's RNG is
#                         ready at once, so sshd does not wait for entropy)
#   --image DIR           the image folder (default $OUT: build/images/stock;
#                         build/images/qgpu or build/images/debug for the
#                         project's own kernels); its kernel-cmdline is added
#   --kernel F / --initrd F   default DIR/vmlinux (PVH boot), DIR/initramfs.img
#   --console plain|edit  console shell style (default: edit on a terminal,
#                         plain when stdin is not a terminal); see rootfs/init
#   --no-boot-tuning      do not add the boot-time tuning parameters
#   --dry-run             print the QEMU command line and exit
#
# Environment: QEMU (default /work/main/build/bin/qemu-system-x86_64), OUT.
# Exit status: the command's status (--cmd), QEMU's status otherwise; 124 on
# timeout; 125 if the guest ended without reporting the command's status.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
OUT=${OUT:-$top/build/images/stock}
QEMU=${QEMU:-$top/build/bin/qemu-system-x86_64}

mode=direct cmd= have_cmd= timeout_s= vram_file= vram_size=64M ssh_port= qmp=
serial_log= run_dir= console= cpu=qemu64,+rdrand keep_run_dir= smp=2 mem=1G tuning=1 dry_run= qgpu_opts=
kernel= initrd=
extra_append=() extra_qemu=()

die() { echo "run-guest: $*" >&2; exit 2; }
info() { echo "run-guest: $*" >&2; }
while (($#)); do
    case $1 in
        --mode) mode=$2; shift ;;
        --cmd) cmd=$2; have_cmd=1; shift ;;
        --timeout) timeout_s=$2; shift ;;
        --vram-backend) vram_file=$2; shift ;;
        --vram-size) vram_size=$2; shift ;;
        --ssh-port) ssh_port=$2; shift ;;
        --qmp) qmp=$2; shift ;;
        --serial-log) serial_log=$2; shift ;;
        --run-dir) run_dir=$2; keep_run_dir=1; shift ;;
        --append) extra_append+=("$2"); shift ;;
        --qgpu-opts) qgpu_opts=,${2#,}; shift ;;
        --qemu-arg) extra_qemu+=("$2"); shift ;;
        --smp) smp=$2; shift ;;
        --cpu) cpu=$2; shift ;;
        --mem) mem=$2; shift ;;
        --image) OUT=$2; shift ;;
        --kernel) kernel=$2; shift ;;
        --initrd) initrd=$2; shift ;;
        --console) console=$2; shift ;;
        --no-boot-tuning) tuning= ;;
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '3,/^set -e/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

kernel=${kernel:-$OUT/vmlinux} initrd=${initrd:-$OUT/initramfs.img}
[[ -x $QEMU ]] || die "QEMU not found at $QEMU (make -C $top qemu)"
[[ -e $kernel ]] || die "kernel $kernel missing (make -C $here kernel)"
[[ -e $initrd ]] || die "initramfs $initrd missing (make -C $here initramfs)"
[[ -n $timeout_s ]] || { [[ -n $have_cmd ]] && timeout_s=600 || timeout_s=0; }

# ---- guest kernel command line ----------------------------------------------------
append=(console=ttyS0,115200 quiet panic=-1 8250.nr_uarts=1)
# What this kernel wants (e.g. mitigations=off for Debian's, DMA-API debugging
# filters for the debug kernel): written beside it when it was fetched or built.
if [[ -s $OUT/kernel-cmdline ]]; then read -ra kwords <"$OUT/kernel-cmdline" || true; append+=("${kwords[@]}"); fi
if [[ -n $tuning ]]; then
    # Boot-time tuning for TCG (measured: ~1 s saved). These skip work a
    # throw-away test guest does not need: crypto self-tests, the jitter
    # entropy source, BTF-parsing BPF initcalls, encrypted keys, the module
    # signing keyring (modules still load; the kernel is tainted anyway by
    # the out-of-tree qgpu.ko), the PS/2 controller, IPv6 (SSH is forwarded
    # over IPv4), the audit subsystem, the TSC watchdog.
    append+=(cryptomgr.notests
             initcall_blacklist=jent_mod_init,crypto_kdf108_init,bpf_tcp_ca_kfunc_init,bpf_dummy_struct_ops_init,bpf_sockmap_iter_init,init_encrypted,load_system_certificate_list,i8042_init
             tsc=reliable nowatchdog audit=0 ipv6.disable=1)
fi
machine=q35
dev_iommu=()
case $mode in
    direct) ;;
    swiotlb) append+=(swiotlb=force) ;;
    iommu)
        machine=q35,kernel-irqchip=split
        dev_iommu=(-device intel-iommu,intremap=on,caching-mode=on)
        append+=(intel_iommu=on iommu=nopt)
        ;;
    virtio-iommu)
        dev_iommu=(-device virtio-iommu-pci)
        append+=(iommu.passthrough=0)
        ;;
    *) die "--mode must be direct, swiotlb, iommu or virtio-iommu" ;;
esac
if [[ -n $have_cmd ]]; then
    append+=("qgpu_cmd=$(printf '%s' "$cmd" | base64 -w0)")
fi
if [[ -z $console ]]; then
    [[ -t 0 ]] && console=edit || console=plain
fi
[[ -n $have_cmd ]] || append+=("qgpu_console=$console")
append+=("${extra_append[@]}")
cmdline="${append[*]}"
((${#cmdline} < 2048)) || die "kernel command line too long (${#cmdline} bytes; --cmd too long?)"

# ---- run directory, ports ----------------------------------------------------------
if [[ -z $run_dir ]]; then
    mkdir -p "$OUT/run"
    run_dir=$(mktemp -d "$OUT/run/guest.XXXXXX")
else
    mkdir -p "$run_dir"
fi
qmp=${qmp:-$run_dir/qmp.sock}
if [[ -z $ssh_port ]]; then
    ssh_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
log_file=$run_dir/serial.log
pid_file=$run_dir/qemu.pid
rm -f "$log_file" "$pid_file" "$qmp"

vram=()
if [[ -n $vram_file ]]; then
    vram=(-object "memory-backend-file,id=vram0,mem-path=$vram_file,size=$vram_size,share=on")
    qgpu_opts="$qgpu_opts,memdev=vram0"
fi

interactive=
[[ -z $have_cmd && -t 0 ]] && interactive=1
if [[ -n $interactive ]]; then
    chardev=(-chardev "stdio,id=ser0,mux=on,signal=off,logfile=$log_file" -serial chardev:ser0 -mon chardev=ser0,mode=readline)
else
    chardev=(-chardev "stdio,id=ser0,signal=off,logfile=$log_file" -serial chardev:ser0)
fi

qemu_cmd=("$QEMU" -accel tcg -machine "$machine" -cpu "$cpu" -smp "$smp" -m "$mem"
    -nodefaults -no-user-config -display none -no-reboot
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
    "${chardev[@]}"
    -qmp "unix:$qmp,server=on,wait=off"
    -pidfile "$pid_file"
    "${dev_iommu[@]}"
    "${vram[@]}"
    -device pcie-root-port,id=rp0,chassis=1
    -device "qgpu,id=qgpu0,bus=rp0$qgpu_opts"
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$ssh_port-:22"
    -device virtio-net-pci,netdev=n0,romfile=
    "${extra_qemu[@]}")

if [[ -n $dry_run ]]; then
    printf '%q ' "${qemu_cmd[@]}"; echo
    [[ -n $keep_run_dir ]] || rm -rf "$run_dir"
    exit 0
fi
printf '%q ' "${qemu_cmd[@]}" >"$run_dir/qemu.cmdline"; echo >>"$run_dir/qemu.cmdline"

# ---- run, always cleaning up ------------------------------------------------------
qpid= cleaned=
cleanup() {
    [[ -n $cleaned ]] && return
    cleaned=1
    local p
    # QEMU first (its pid file), then the timeout process.
    for p in "$(cat "$pid_file" 2>/dev/null || true)" "$qpid"; do
        [[ -n $p ]] && kill -0 "$p" 2>/dev/null || continue
        kill -TERM "$p" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    [[ -n $qpid ]] && wait "$qpid" 2>/dev/null || true
    [[ -n $interactive ]] && stty sane 2>/dev/null || true
    if [[ -n $serial_log && -e $log_file ]]; then cp "$log_file" "$serial_log"; fi
    [[ -n $keep_run_dir ]] || rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM HUP

info "mode=$mode ssh: ssh -i $OUT/ssh/id_ed25519 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -p $ssh_port root@127.0.0.1"
info "qmp=$qmp run-dir=$run_dir${interactive:+ (Ctrl-A X quits)}"
echo "$ssh_port" >"$run_dir/ssh-port"

exec 3<&0
if [[ -n $have_cmd ]]; then exec 3</dev/null; fi
start_ns=$(date +%s%N)
cut -d' ' -f1 /proc/uptime >"$run_dir/qemu.start"   # for boot-bench (CLOCK_BOOTTIME)
runner=()
# --foreground: QEMU stays in our process group (it may read the terminal);
# timeout forwards TERM/INT to it and kills it on expiry.
((timeout_s > 0)) && runner=(timeout --foreground -k 5 "$timeout_s")
# The subshell drops our traps and execs, so $! is timeout's (or QEMU's) pid.
(trap - EXIT INT TERM HUP; exec "${runner[@]}" "${qemu_cmd[@]}") <&3 &
qpid=$!
set +e
wait "$qpid"
qrc=$?
set -e
qpid=
elapsed_ms=$((($(date +%s%N) - start_ns) / 1000000))

if ((qrc == 124)); then
    info "TIMEOUT after ${timeout_s}s: QEMU killed"
    exit 124
fi
if [[ -n $have_cmd ]]; then
    rc=$(tr -d '\r' <"$log_file" | sed -n 's/^QGPU-CMD-RC=\([0-9][0-9]*\)$/\1/p' | tail -1)
    if [[ -z $rc ]]; then
        info "guest ended (QEMU status $qrc, ${elapsed_ms} ms) without reporting the command's status"
        exit 125
    fi
    info "command exited with status $rc (QEMU status $qrc, ${elapsed_ms} ms)"
    exit "$rc"
fi
exit "$qrc"
