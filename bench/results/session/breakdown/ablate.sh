#!/bin/bash
# Interleaved arms on two running VMs: OLD_VM booted with the old monitor (a flush per breakpoint
# change), NEW_VM with the new one; on each, unwatched and watched by the old and the new
# `hvtrace session`; the order rotates per round. Appends to ablate.log.
#   ablate.sh ROUNDS OLD_VM NEW_VM OLD_HVTRACE NEW_HVTRACE
R=$1; A=$2; B=$3; OLD=$4; NEW=$5
D=$(dirname "$0")
ARMS=("$A $OLD idle A-idle" "$A $OLD session A-oldsess" "$A $NEW session A-newsess"
      "$B $NEW idle B-idle" "$B $OLD session B-oldsess" "$B $NEW session B-newsess")
N=${#ARMS[@]}
for r in $(seq 1 "$R"); do
  for k in $(seq 0 $((N-1))); do
    a=(${ARMS[$(( (k + r) % N ))]})
    line=$("$D/run1.sh" ${a[0]} ${a[1]} ${a[2]} ${a[3]}-r$r stat | tail -1)
    ev=$(grep -o "watching cost: [0-9]* events" out-${a[3]}-r$r/watcher.out 2>/dev/null | awk '{print $3}')
    sp=$(grep -o "[0-9]* synchronous pauses" out-${a[3]}-r$r/watcher.out 2>/dev/null | awk '{print $1}')
    echo "$line events=$ev pauses=$sp" | tee -a ablate.log
  done
done
