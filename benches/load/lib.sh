# Shared by the load scripts in this folder (sourced, not run): installing the tools a script
# needs, the release binary, a work directory whose processes are stopped by PID on exit, free
# loopback ports, and the nginx upstream that answers every request with 13 bytes.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   need_tools wrk nginx curl            # Debian packages of the ones missing
#   need_bin                             # builds $BIN (the release binary) if it is missing
#   work_dir NAME                        # $WORK, removed (and $PIDS stopped) on exit
#   UP=$(free_port); start_nginx "$UP"   # adds nginx's PID to $PIDS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${BIN:-$ROOT/target/release/switchyard}
PIDS=()

# Installs the Debian packages of the tools that are missing (a tool's package has its name,
# except etcd's: etcd-server).
need_tools() {
    local tool need=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || need+=("${tool/#etcd/etcd-server}")
    done
    if ((${#need[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
    fi
}

need_bin() {
    [[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet --bin switchyard)
}

# $WORK: a fresh directory under /tmp; on exit the processes in $PIDS are stopped (TERM, then
# KILL) and it is removed.
work_dir() {
    WORK=$(mktemp -d "/tmp/switchyard-$1.XXXXXX")
    chmod 755 "$WORK"
    trap cleanup EXIT
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# One nginx worker on 127.0.0.1:$1 answering `hello, world` to everything, keep-alive for good.
start_nginx() {
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$1; location / { return 200 "hello, world\n"; } }
}
EOF
    nginx -c "$WORK/nginx.conf" -p "$WORK"
    sleep 0.3
    PIDS+=("$(cat "$WORK/nginx.pid")")
}
