#!/usr/bin/env bash
# Print the path of a HashiCorp Consul agent binary for the integration tests,
# building it once from the Go module proxy (see tools/consul/README.md).
#
#   consul="$(tools/get-consul.sh)" || exit 1
#
# The binary is cached in ${DHASHMAP_CACHE:-$HOME/.cache/dhashmap}/consul-<version>/consul;
# a second run only checks that file. stdout carries the path and nothing else;
# progress and errors go to stderr. Needs Go >= 1.24 and the Go module proxy.
set -euo pipefail

die() { echo "get-consul.sh: $*" >&2; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/consul"
[ -f "$mod/go.mod" ] || die "missing $mod/go.mod"

# The pinned version is the one in go.mod (e.g. v1.14.8 -> 1.14.8).
version="$(awk '$1 == "github.com/hashicorp/consul" { sub(/^v/, "", $2); print $2; exit }' "$mod/go.mod")"
[ -n "$version" ] || die "no github.com/hashicorp/consul requirement in $mod/go.mod"

cache="${DHASHMAP_CACHE:-$HOME/.cache/dhashmap}"
dir="$cache/consul-$version"
bin="$dir/consul"

if [ -x "$bin" ] && [ -f "$dir/.ok" ]; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "no go command on PATH (need Go >= 1.24; Debian bookworm's golang-go is too old)"
mkdir -p "$dir" || die "cannot create $dir"

build() {
    # Another process may have finished the build while we waited for the lock.
    if [ -x "$bin" ] && [ -f "$dir/.ok" ]; then return 0; fi
    rm -f "$dir/.ok"
    local tmp="$dir/consul.tmp.$$"
    local start=$SECONDS
    echo "get-consul.sh: building Consul $version into $dir (takes a few minutes the first time)..." >&2
    # -mod=readonly: go.mod/go.sum are the pin; never rewrite them.
    # CGO_ENABLED=0 as in HashiCorp's release builds (and no C compiler needed).
    # GOTOOLCHAIN=local: never fetch another Go; GOWORK=off: ignore any go.work around.
    if ! (cd "$mod" && env GOFLAGS="-mod=readonly -buildvcs=false" GOWORK=off GOTOOLCHAIN=local \
            CGO_ENABLED=0 nice -n 19 go build -trimpath \
            -ldflags "-s -w" \
            -o "$tmp" github.com/hashicorp/consul >&2); then
        rm -f "$tmp"
        die "go build of github.com/hashicorp/consul v$version failed (see the messages above)"
    fi
    local got
    got="$("$tmp" version 2>&1 | head -n 1)" || true
    case "$got" in
        "Consul v$version"*) ;;
        *) rm -f "$tmp"; die "built binary reports '$got', expected Consul v$version" ;;
    esac
    mv -f "$tmp" "$bin"
    touch "$dir/.ok"
    echo "get-consul.sh: built $got in $((SECONDS - start))s" >&2
}

if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir/.lock"
    flock 9 || die "cannot lock $dir/.lock"
fi
build
echo "$bin"
