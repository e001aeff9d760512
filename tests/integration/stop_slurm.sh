#!/usr/bin/env bash
# Integration tests (batch): stop the single-node Slurm that start_slurm.sh started.
#
# Cancels every job still queued, then stops slurmd, slurmctld and munged by the pids
# their pid files (or munge's) name. Leaves the packages installed.
set -uo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/hepprep-slurm}

scancel --full --quiet --user="$(id -un)" 2>/dev/null || true

stop_pidfile() {
    local file=$1 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop_pidfile "$SLURM_ROOT/run/slurmd.pid"
stop_pidfile "$SLURM_ROOT/run/slurmctld.pid"
for f in /run/munge/munged.pid /var/run/munge/munged.pid; do
    stop_pidfile "$f"
done
echo "stop_slurm.sh: Slurm and munge stopped" >&2
