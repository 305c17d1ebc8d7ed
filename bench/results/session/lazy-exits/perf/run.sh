#!/bin/bash
# run.sh VM HVTRACE ARM TAG [stat|record]: one bench session (uname -a, ls /, jansson-workload 2, cat /etc/os-release, exit)
# against a running VM, idle (nobody attached) or session (`HVTRACE session --follow`); writes out-TAG/ here;
# prints each QEMU thread's utime/stime ticks and context switches over the attacker's run.
# stat: counts TB-hash lookups, TLB fills and translations (uprobes, made once with:
#   perf probe -x /usr/bin/qemu-system-x86_64 -a qht_lookup_custom -a tlb_set_page_full -a tcg_gen_code)
# record: perf record -F 1999 of QEMU over the session
VM=$1; HV=$2; ARM=$3; TAG=$4; PERF=$5
SRC=$(cd "$(dirname "$0")/../../../../.." && pwd)
KEYDIR=${HVTRACE_CACHE:-/var/cache/hvtrace}/guest/default
J=$($HV vm status --name "$VM" --json)
QPID=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["qemu_pid"])')
PORT=$(echo "$J" | python3 -c 'import json,sys;print(json.load(sys.stdin)["ssh_port"])')
snap() { for t in /proc/$QPID/task/*; do c=$(tr ' ' '_' < $t/comm); read -a s < <(sed 's/.*) //' $t/stat); vcs=$(awk '/^voluntary_ctxt/{print $2}' $t/status); ics=$(awk '/^nonvoluntary_ctxt/{print $2}' $t/status); echo "$(basename $t) $c ${s[11]} ${s[12]} $vcs $ics"; done; }
printf 'uname -a\nls /\njansson-workload {{N}}\ncat /etc/os-release\nexit\n' > bench.session
rm -rf "out-$TAG"; mkdir -p "out-$TAG"
WP=
if [ "$ARM" = session ]; then
  $HV session --vm "$VM" -o "out-$TAG/sess" --follow > "out-$TAG/watcher.out" 2> "out-$TAG/watcher.log" & WP=$!
  for i in $(seq 1 300); do grep -q "watching" "out-$TAG/watcher.log" && break; sleep 0.2; done
fi
snap > out-$TAG/s0; t0=$(date +%s.%N)
if [ "$PERF" = stat ]; then perf stat -e probe_qemu:qht_lookup_custom,probe_qemu:tlb_set_page_full,probe_qemu:tcg_gen_code -p $QPID -o "out-$TAG/stat.txt" > /dev/null 2>&1 & PP=$!; elif [ "$PERF" = record ]; then perf record -F 1999 -p $QPID -o "out-$TAG/perf.data" > /dev/null 2>&1 & PP=$!; fi
python3 "$SRC/scripts/attacker" --port "$PORT" --password-file "$KEYDIR/passwords" --delay 10-30 --timeout 600 \
  --screen "out-$TAG/screen.txt" -q --set N=2 bench.session > /dev/null 2>&1
snap > out-$TAG/s1; t1=$(date +%s.%N)
if [ -n "$PERF" ]; then kill -INT $PP; wait $PP; fi
sleep 1
if [ -n "$WP" ]; then kill -INT $WP; wait $WP; fi
join out-$TAG/s0 out-$TAG/s1 | awk -v tag=$TAG -v arm=$ARM '{du=$8-$3; ds=$9-$4; if (du+ds>0) printf "%s %s thread %s utime=%d stime=%d ticks, switches voluntary=%d involuntary=%d\n", tag, arm, $1, du, ds, $10-$5, $11-$6}'
