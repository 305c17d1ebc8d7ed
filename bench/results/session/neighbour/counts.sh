#!/bin/bash
# QEMU-side counts over one scripted session, unwatched and watched, on a running VM with the
# monitor (hvtrace vm up --name VM --monitor): code flushes, translations, TB invalidations, TLB and
# jump-cache flushes, vCPU kicks, counted with uprobes on the QEMU binary. Make the probes once:
#   for f in qemu_plugin_reset tcg_gen_code tcg_flush_jmp_cache tlb_flush tlb_flush_by_mmuidx tlb_flush_page \
#            cpu_exit qemu_cpu_kick tb_phys_invalidate tb_invalidate_phys_range_fast; do
#     perf probe -x /usr/bin/qemu-system-x86_64 -a $f; done
# (Do not probe helper_lookup_tb_ptr: it runs ~80 M times per session and the uprobe slows QEMU 100x.)
# The uprobes' own cost inflates QEMU CPU ~1.7x: the tick figures here are not the bench's.
#   counts.sh VM HVTRACE TAG...   (TAG starting with s: watched by `hvtrace session --follow`)
VM=$1; HV=$2; shift 2
KEYDIR=${HVTRACE_CACHE:-/var/cache/hvtrace}/guest/default
SRC=$(cd "$(dirname "$0")/../../../.." && pwd)
J=$($HV vm status --name "$VM" --json)
QPID=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["qemu_pid"])')
PORT=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["ssh_port"])')
EV=$(perf probe -l 2>/dev/null | awk '{print $1}' | tr '\n' ',' | sed 's/,$//')
printf 'uname -a\nls /\njansson-workload {{N}}\ncat /etc/os-release\nexit\n' > bench.session
for TAG in "$@"; do
  WP=
  if [[ $TAG == s* ]]; then
    rm -rf sess; $HV session --vm "$VM" -o sess --follow > w.out 2> w.log & WP=$!
    for i in $(seq 1 300); do grep -q "watching" w.log && break; sleep 0.2; done
  fi
  q0=$(awk '{print $14+$15}' /proc/$QPID/stat)
  perf stat -e "$EV" -p "$QPID" -o "st-$TAG.txt" > /dev/null 2>&1 & PP=$!
  timeout 300 python3 "$SRC/scripts/attacker" --port "$PORT" --password-file "$KEYDIR/passwords" --delay 10-30 --timeout 200 \
    -q --set N=2 bench.session > /dev/null 2>&1
  q1=$(awk '{print $14+$15}' /proc/$QPID/stat)
  kill -INT $PP; wait $PP
  echo "$TAG qemu ticks $((q1-q0))" $(grep probe_qemu "st-$TAG.txt" | awk '{sub("probe_qemu:","",$2); print $2"="$1}')
  if [ -n "$WP" ]; then sleep 1; kill -INT $WP; wait $WP; fi
done
