#!/usr/bin/env bash
# Integration tests (remote input): start a standalone XRootD server on localhost.
#
#   start_xrootd.sh EXPORT_DIR PORT RUN_DIR
#
# Installs Debian's xrootd-server if `xrootd` is missing (needs root and apt), then serves
# EXPORT_DIR read-only at root://localhost:PORT//EXPORT_DIR/... . The server's config, log
# and pid file go to RUN_DIR; the pid is printed on stdout once the port accepts connections.
# Stop it with `kill $(cat RUN_DIR/xrootd.pid)`.
#
# xrootd refuses to run as root: as root the server runs as the `xrootd` user (created by
# the package) or `nobody`, so EXPORT_DIR and every folder above it must be readable and
# traversable by others, and RUN_DIR writable by that user (a pytest tmp_path, under a
# 0700 folder, is neither).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 EXPORT_DIR PORT RUN_DIR" >&2
    exit 2
fi
export_dir=$(realpath "$1")
port=$2
run_dir=$(realpath -m "$3")

if ! command -v xrootd >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "$0: xrootd is not installed; install Debian's xrootd-server (apt-get install xrootd-server)" >&2
        exit 1
    fi
    echo "$0: installing xrootd-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends xrootd-server >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -q --no-install-recommends xrootd-server >&2; }
fi

mkdir -p "$run_dir"
run_as=()
if [ "$(id -u)" -eq 0 ]; then
    user=nobody
    getent passwd xrootd >/dev/null && user=xrootd
    run_as=(-R "$user")
    chown "$user" "$run_dir"
    if ! su -s /bin/sh "$user" -c "test -r '$export_dir' && test -x '$export_dir'"; then
        echo "$0: $export_dir is not readable by the server user '$user'; export a folder" \
             "that others can read (chmod a+rX, and every parent a+x)" >&2
        exit 1
    fi
    if ! su -s /bin/sh "$user" -c "test -w '$run_dir'"; then
        echo "$0: $run_dir (log and pid file) is not writable by the server user '$user';" \
             "choose a RUN_DIR whose parents others can traverse (a+x)" >&2
        exit 1
    fi
fi

cat > "$run_dir/xrootd.cfg" <<EOF
all.export $export_dir r/o
xrd.trace off
EOF

if ! xrootd "${run_as[@]}" -b -p "$port" -c "$run_dir/xrootd.cfg" -l "$run_dir/xrootd.log" \
       -s "$run_dir/xrootd.pid" >"$run_dir/xrootd.out" 2>&1; then
    echo "$0: xrootd failed to start:" >&2
    cat "$run_dir/xrootd.out" >&2
    exit 1
fi

# -b forks into the background; wait for the pid file and the listening port.
for _ in $(seq 100); do
    if [ -s "$run_dir/xrootd.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        cat "$run_dir/xrootd.pid"
        exit 0
    fi
    sleep 0.1
done
echo "$0: xrootd did not start on port $port; see $run_dir/xrootd.out and $run_dir/xrootd.log*" >&2
cat "$run_dir/xrootd.out" >&2 || true
exit 1
