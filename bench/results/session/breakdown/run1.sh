#!/bin/bash
# One scripted SSH session (the bench's: uname -a, ls /, jansson-workload 2, cat /etc/os-release,
# exit; scripts/attacker, keys 10-30 ms) against a running VM, QEMU CPU (utime+stime from
# /proc/PID/stat) from the attacker's start to its exit, as `hvtrace bench session` measures it.
#   run1.sh VM HVTRACE ARM TAG [stat|record]
#   ARM: idle (nobody attached) | session (`HVTRACE session --follow`) | trace (`trace -f -c -p <dropbear>`)
#   stat: count QEMU's code flushes and translations (uprobes, made once with the line below), its futex and ppoll calls and context switches
#         perf probe -x /usr/bin/qemu-system-x86_64 -a qemu_plugin_reset -a tcg_gen_code
#   record: perf record -F 999 -g of QEMU over the session
# Writes out-TAG/ in the current directory; prints one line: TAG ARM counts qemu_cpu_s wall_s.
VM=$1; HV=$2; ARM=$3; TAG=$4; PERF=$5
SRC=$(cd "$(dirname "$0")/../../../.." && pwd)
KEYDIR=${HVTRACE_CACHE:-/var/cache/hvtrace}/guest/default
J=$($HV vm status --name "$VM" --json)
QPID=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["qemu_pid"])')
PORT=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["ssh_port"])')
cpu() { awk '{print $14+$15}' /proc/$QPID/stat; }
printf 'uname -a\nls /\njansson-workload {{N}}\ncat /etc/os-release\nexit\n' > bench.session
rm -rf "out-$TAG"; mkdir -p "out-$TAG"
WP=
if [ "$ARM" = session ]; then
  $HV session --vm "$VM" -o "out-$TAG/sess" --follow > "out-$TAG/watcher.out" 2> "out-$TAG/watcher.log" & WP=$!
  for i in $(seq 1 300); do grep -q "watching" "out-$TAG/watcher.log" && break; sleep 0.2; done
elif [ "$ARM" = trace ]; then
  DB=$($HV vm exec --name "$VM" -- pidof dropbear | tr ' ' '\n' | sort -n | head -1)
  $HV trace --vm "$VM" -f -c -p "$DB" -s 65536 > "out-$TAG/watcher.out" 2> "out-$TAG/watcher.log" & WP=$!
  sleep 8
fi
c0=$(cpu); t0=$(date +%s.%N)
if [ "$PERF" = stat ]; then perf stat -e probe_qemu:qemu_plugin_reset,probe_qemu:tcg_gen_code,syscalls:sys_enter_futex,syscalls:sys_enter_ppoll,cs -p $QPID -o "out-$TAG/stat.txt" > /dev/null 2>&1 & PP=$!
elif [ "$PERF" = record ]; then perf record -F 999 -g -p $QPID -o "out-$TAG/perf.data" > /dev/null 2>&1 & PP=$!; fi
python3 "$SRC/scripts/attacker" --port "$PORT" --password-file "$KEYDIR/passwords" --delay 10-30 --timeout 600 \
  --screen "out-$TAG/screen.txt" -q --set N=2 bench.session > /dev/null 2>&1
c1=$(cpu); t1=$(date +%s.%N)
if [ -n "$PERF" ]; then kill -INT $PP; wait $PP; fi
sleep 1
if [ -n "$WP" ]; then kill -INT $WP; wait $WP; fi
ST=""; [ -f "out-$TAG/stat.txt" ] && ST=$(grep -E "probe_qemu|syscalls|cs" "out-$TAG/stat.txt" | awk '{sub("probe_qemu:","",$2); sub("syscalls:","",$2); printf "%s=%s ", $2, $1}')
echo "$TAG $ARM $ST qemu_cpu_s=$(echo "($c1-$c0)/100" | bc -l | cut -c1-6) wall_s=$(echo "$t1-$t0" | bc -l | cut -c1-6)"
