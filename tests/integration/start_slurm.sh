#!/usr/bin/env bash
# Integration tests (batch): install and start a single-node Slurm on this host.
#
# One node (this host, with the CPUs and memory `slurmd -C` finds), one partition, munge
# authentication; slurmctld and slurmd run as daemons with their state under $SLURM_ROOT.
# Needs root. Idempotent: a running cluster that answers `sinfo` is left as it is.
# Stop it with tests/integration/stop_slurm.sh.
#
#   SLURM_ROOT   state, logs, pid files (default /tmp/hepprep-slurm)
#   SLURM_PARTITION  partition name (default hepprep)
set -euo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/hepprep-slurm}
PARTITION=${SLURM_PARTITION:-hepprep}
HOST=$(hostname -s)

if [ "$(id -u)" -ne 0 ]; then
    echo "start_slurm.sh: needs root to install and start Slurm (run it as root or with sudo)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "start_slurm.sh: installing slurm-wlm and munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
fi

# Already up (an earlier run of this script)?
if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "start_slurm.sh: Slurm already running" >&2
    exit 0
fi

mkdir -p "$SLURM_ROOT"/{state,spool,log,run}

# munge: one key, daemon with its socket where the Slurm plugins look for it by default.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# The node line from what slurmd sees on this host (CPUs, sockets, memory), minus a margin
# of memory so the node is not drained for "Low RealMemory".
NODE_LINE=$(slurmd -C | head -n 1)
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
NODE_LINE=$(sed "s/RealMemory=[0-9]*/RealMemory=$((MEM * 9 / 10))/; s/NodeName=[^ ]*/NodeName=$HOST/" <<<"$NODE_LINE")

CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR"
cat >"$CONF_DIR/slurm.conf" <<CONF
# Written by hepprep tests/integration/start_slurm.sh: a one-node test cluster.
ClusterName=hepprep
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldPidFile=$SLURM_ROOT/run/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/run/slurmd.pid
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
$NODE_LINE State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
# No cgroups in a container: an empty cgroup.conf keeps slurmd from probing for them.
: >"$CONF_DIR/cgroup.conf"

slurmctld
slurmd

for _ in $(seq 120); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^idle'; then
        echo "start_slurm.sh: Slurm up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -n 1)" >&2
        exit 0
    fi
    sleep 0.5
done
echo "start_slurm.sh: the node did not become idle in 60 s; sinfo says:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$SLURM_ROOT/log/slurmctld.log" "$SLURM_ROOT/log/slurmd.log" >&2 || true
exit 1
