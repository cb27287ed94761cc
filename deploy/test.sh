#!/usr/bin/env bash
# The README's test command: installs what the integration tests need on a fresh Debian machine
# (etcd 3.4 from Debian's etcd-server, etcdctl from etcd-client, Debian's chromium for the
# headless stats page test, the openssl CLI that signs the OCSP responses in
# tests/tls_ocsp.rs, systemd's systemd-socket-activate for tests/takeover.rs, and pebble with
# pebble-challtestsrv, the ACME server of tests/acme.rs), then runs the whole test suite (unit tests, and integration tests
# against a real etcd on free loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
[[ -x /usr/bin/chromium ]] || command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-socket-activate >/dev/null 2>&1 || need+=(systemd)
command -v pebble >/dev/null 2>&1 || need+=(pebble)
if ((${#need[@]})); then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; fi
    echo "installing ${need[*]} (needed by the integration tests)"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi

exec cargo test "$@"
