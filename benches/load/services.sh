#!/usr/bin/env bash
# Service trees at scale, against a real etcd (Debian's etcd-server, v2 keys API) and the release
# binary: 1,000 services x 3 servers are written under /services before Switchyard starts, then
#   1. initial load: from the process start to /api/v1/routes listing every service (target
#      <= 1 s), and the resident memory after it (target <= 64 MB);
#   2. metric series: one request to every service, then the number of series /metrics exports
#      (what a tree of that size costs Prometheus);
#   3. propagation: for each of 50 new services, the time from just before the PUT of its first
#      server key to the first request routed to it by Host (a keep-alive client polling back to
#      back; every answer before that is the 404 "no route"): p50 and p99 (target p99 <= 10 ms).
#
#   benches/load/services.sh          # target/release/switchyard
#
# Environment: BIN, SERVICES (1000), SERVERS (3), SAMPLES (50). Loopback only, free ports picked
# at run time; etcd, nginx and Switchyard are stopped by PID on exit.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SERVICES=${SERVICES:-1000}
SERVERS=${SERVERS:-3}
SAMPLES=${SAMPLES:-50}

need_tools etcd nginx curl
need_bin

work_dir services

UP=$(free_port) WEB=$(free_port) ADMIN=$(free_port) ETCD=$(free_port) PEER=$(free_port)

etcd --name bench --data-dir "$WORK/etcd" --enable-v2=true \
    --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
    --initial-cluster "bench=http://127.0.0.1:$PEER" >"$WORK/etcd.log" 2>&1 &
PIDS+=("$!")

start_nginx "$UP"

for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$ETCD/version" >/dev/null 2>&1 && break
    sleep 0.1
done

# The keys, over one keep-alive connection (3,000 curl processes would take longer than the test).
python3 - "$ETCD" "$SERVICES" "$SERVERS" "$UP" <<'PY'
import http.client, sys, urllib.parse
port, services, servers, up = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = http.client.HTTPConnection("127.0.0.1", port)
for s in range(services):
    for k in range(servers):
        body = urllib.parse.urlencode({"value": f"127.0.0.1:{up}"})
        c.request("PUT", f"/v2/keys/services/svc{s}/backend/{k}", body,
                  {"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse(); r.read()
        assert r.status in (200, 201), r.status
PY

cat >"$WORK/sy.toml" <<EOF
[admin]
listen = "127.0.0.1:$ADMIN"
[etcd]
endpoints = ["http://127.0.0.1:$ETCD"]
api = "v2"
[[frontend]]
name = "web"
bind = "127.0.0.1:$WEB"
[[service_tree]]
etcd_prefix = "/services"
frontends = ["web"]
host = "{service}.example.com"
template = "defaults"
[[backend]]
name = "defaults"
[backend.check]
type = "none"
EOF

echo "benches/load/services.sh: git $(cd "$ROOT" && git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
"$BIN" run -c "$WORK/sy.toml" >"$WORK/sy.log" 2>&1 &
SY=$!
PIDS+=("$SY")
python3 - "$ADMIN" "$SERVICES" "$SY" <<'PY'
import http.client, json, os, sys, time
admin, services, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
# The process start, from /proc (jiffies since boot), against the clock now.
ticks = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[19])
hz = os.sysconf("SC_CLK_TCK")
uptime = float(open("/proc/uptime").read().split()[0])
started = time.monotonic() - (uptime - ticks / hz)
deadline = time.monotonic() + 30
n = 0
while time.monotonic() < deadline:
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
        c.request("GET", "/api/v1/routes")
        doc = json.loads(c.getresponse().read())
        n = sum(len(f["routes"]) for f in doc["frontends"])
        if n >= services:
            break
    except OSError:
        pass
    time.sleep(0.01)
took = time.monotonic() - started
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"initial load: {n} services routed {took:.3f} s after the process started (target <= 1 s)")
print(f"RSS after it: {int(rss) / 1024:.1f} MB (target <= 64 MB)")
PY

python3 - "$WEB" "$ADMIN" "$SERVICES" <<'PY'
import http.client, sys
web, admin, services = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def series():
    c = http.client.HTTPConnection("127.0.0.1", admin)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(1 for l in text.splitlines() if l and not l.startswith("#"))
before = series()
w = http.client.HTTPConnection("127.0.0.1", web)
for s in range(services):
    w.request("GET", "/", headers={"Host": f"svc{s}.example.com"})
    r = w.getresponse(); r.read()
    assert r.status == 200, r.status
after = series()
print(f"metric series: {before} before any request, {after} after one request to each of {services} services (about {after / services:.1f} per service)")
PY

python3 - "$ETCD" "$WEB" "$UP" "$SAMPLES" <<'PY'
import http.client, sys, time, urllib.parse
etcd, web, up, samples = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
e = http.client.HTTPConnection("127.0.0.1", etcd)
w = http.client.HTTPConnection("127.0.0.1", web)
took, acks = [], []
for i in range(samples):
    host = f"new{i}.example.com"
    body = urllib.parse.urlencode({"value": f"127.0.0.1:{up}"})
    t0 = time.monotonic()
    e.request("PUT", f"/v2/keys/services/new{i}/backend/1", body,
              {"Content-Type": "application/x-www-form-urlencoded"})
    r = e.getresponse(); r.read()
    acks.append((time.monotonic() - t0) * 1000)
    while True:
        w.request("GET", "/", headers={"Host": host})
        r = w.getresponse(); r.read()
        if r.status == 200:
            break
        if time.monotonic() - t0 > 5:
            raise SystemExit(f"{host} not routed within 5 s (last status {r.status})")
    took.append((time.monotonic() - t0) * 1000)
took.sort(); acks.sort()
p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
print(f"propagation of a new service ({samples} samples): p50 {p(took, 0.5):.2f} ms, p99 {p(took, 0.99):.2f} ms, max {took[-1]:.2f} ms (target p99 <= 10 ms)")
print(f"  of which etcd's answer to the PUT (its commit, fsync included): p50 {p(acks, 0.5):.2f} ms, p99 {p(acks, 0.99):.2f} ms")
PY
