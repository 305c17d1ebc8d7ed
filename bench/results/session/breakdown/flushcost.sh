#!/bin/bash
# What one code-cache flush costs: on a VM with the new monitor (whose cache stays warm), an
# unwatched session, then one new kernel breakpoint address set and removed with `hvtrace events
# --break` outside the measured window (one flush), then the same session again. Appends to flushcost.log.
#   flushcost.sh VM HVTRACE
VM=$1; HV=$2; D=$(dirname "$0")
SYMS=(ksys_sync do_fsync sync_filesystem vfs_fsync_range iterate_supers sync_inodes_sb)
for i in 0 1 2 3 4 5; do
  "$D/run1.sh" "$VM" "$HV" idle warm$i stat | tail -1 | tee -a flushcost.log
  timeout 60 "$HV" events --vm "$VM" --break ${SYMS[$i]} --duration 1 -c 1 > /dev/null 2>&1
  "$D/run1.sh" "$VM" "$HV" idle cold$i stat | tail -1 | tee -a flushcost.log
done
