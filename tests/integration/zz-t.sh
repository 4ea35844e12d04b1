source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/qsd-lib.sh"
qsd_create vm1 sys:qcow2:32 data:raw:16
qsd_start vm1
guest_write_all vm1 1 40 1048576
qsd_daemon_start
REPO=$QSD_ROOT/repo; $VMEXPORT repo init $REPO --chunk-size 1M >/dev/null
T="/usr/bin/time -f %e/%U/%S"
for i in 1 2 3 4; do
guest_write_all vm1 $((i+5)) 2 131072
echo "truth_snap: $( { $T cp --sparse=always $QSD_ROOT/truth/vm1/sys $QSD_ROOT/x1; } 2>&1 ) $( { $T cp --sparse=always $QSD_ROOT/truth/vm1/data $QSD_ROOT/x2; } 2>&1 )"
echo "backup: $( { $T $VMEXPORT backup vm1 --repo $REPO --json --transport nbd > $WORK/summary; } 2>&1 | tail -1)"
mkdir -p $QSD_ROOT/r; rm -rf $QSD_ROOT/r/*
echo "restore: $( { $T $VMEXPORT restore --repo $REPO $(jq -r 'select(.type=="summary") | .backup' $WORK/summary) --to $QSD_ROOT/r >/dev/null; } 2>&1 | tail -1)"
echo "cmp: $( { $T cmp $QSD_ROOT/r/sys $QSD_ROOT/x1; } 2>&1) $( { $T cmp $QSD_ROOT/r/data $QSD_ROOT/x2; } 2>&1)"
done
echo "daemon: $(ps -o times= -p $DAEMON_PID) qsd: $(ps -o times= -p ${QSD_PID[vm1]}) guest: $(ps -o times= -p $GUEST_PID)"
