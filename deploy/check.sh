#!/usr/bin/env bash
# Static checks of the deployment files that need neither a running systemd nor a container engine.
#
#   deploy/check.sh            # both checks
#   deploy/check.sh systemd    # systemd-analyze verify of deploy/systemd/*.service
#   deploy/check.sh compose    # the compose client's config check of deploy/docker-compose.yml
#
# systemd-analyze runs against a scratch root holding this machine's systemd units and a stand-in
# at the exact path of every binary the units start (/opt/... does not exist on a dev machine);
# any warning counts as a failure. The compose check uses `docker compose` or Debian's
# `docker-compose` (apt-get install --no-install-recommends docker-compose) with the example env.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

check_systemd() {
    if ! command -v systemd-analyze >/dev/null; then
        echo "systemd: systemd-analyze not installed" >&2
        return 2
    fi
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
    cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$here"/systemd/*.service "$root/etc/systemd/system/"
    local exe
    for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$here"/systemd/*.service | sort -u); do
        mkdir -p "$root$(dirname "$exe")"
        printf '#!/bin/sh\n' >"$root$exe"
        chmod +x "$root$exe"
    done
    local units out
    units=$(cd "$here/systemd" && ls ./*.service | xargs -n1 basename)
    # shellcheck disable=SC2086
    out=$(systemd-analyze --root="$root" verify $units 2>&1) || { echo "$out"; return 1; }
    if [ -n "$out" ]; then
        echo "$out"
        return 1
    fi
    echo "systemd: systemd-analyze verify passed:" $units
}

check_compose() {
    local compose
    if docker compose version >/dev/null 2>&1; then
        compose=(docker compose)
    elif command -v docker-compose >/dev/null; then
        compose=(docker-compose)
    else
        echo "compose: no compose client (docker compose plugin or docker-compose)" >&2
        return 2
    fi
    "${compose[@]}" --project-directory "$here" -f "$here/docker-compose.yml" \
        --env-file "$here/crawlproj.env.example" config -q
    echo "compose: ${compose[*]} config passed ($("${compose[@]}" version --short 2>/dev/null || true))"
}

case "${1:-all}" in
    systemd) check_systemd ;;
    compose) check_compose ;;
    all) check_systemd; check_compose ;;
    *) echo "usage: $0 [systemd|compose|all]" >&2; exit 2 ;;
esac
