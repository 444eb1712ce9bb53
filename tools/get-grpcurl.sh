#!/usr/bin/env bash
# Print the path of a grpcurl binary (github.com/fullstorydev/grpcurl) for the gRPC tests,
# building it once from the Go module proxy with `go install` at the pinned version.
#
#   grpcurl="$(tools/get-grpcurl.sh)" || exit 1
#
# The binary is cached in ${DHASHMAP_CACHE:-$HOME/.cache/dhashmap}/grpcurl-<version>/grpcurl;
# a second run only checks that file. stdout carries the path and nothing else; progress and
# errors go to stderr. Needs Go (the version grpcurl's go.mod asks for) and the module proxy;
# about a minute on two cores the first time.
set -euo pipefail

version="v1.9.4"
die() { echo "get-grpcurl.sh: $*" >&2; exit 1; }

cache="${DHASHMAP_CACHE:-$HOME/.cache/dhashmap}"
dir="$cache/grpcurl-$version"
bin="$dir/grpcurl"

if [ -x "$bin" ] && [ -f "$dir/.ok" ]; then
    echo "$bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "no go command on PATH (grpcurl $version is built with go install)"
mkdir -p "$dir" || die "cannot create $dir"

build() {
    # Another process may have finished the build while we waited for the lock.
    if [ -x "$bin" ] && [ -f "$dir/.ok" ]; then return 0; fi
    rm -f "$dir/.ok"
    local tmp="$dir/tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    echo "get-grpcurl.sh: building grpcurl $version into $dir..." >&2
    # GOWORK=off: ignore any go.work around; CGO_ENABLED=0: no C compiler needed; main.version is
    # what grpcurl -version prints (its release builds set it the same way).
    if ! env GOBIN="$tmp" GOWORK=off GOFLAGS="-buildvcs=false" CGO_ENABLED=0 \
            nice -n 19 go install -trimpath -ldflags "-X main.version=$version" "github.com/fullstorydev/grpcurl/cmd/grpcurl@$version" >&2; then
        rm -rf "$tmp"
        die "go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$version failed (see the messages above)"
    fi
    local got
    got="$("$tmp/grpcurl" -version 2>&1 | head -n 1)" || true
    case "$got" in
        *"${version#v}"*) ;;
        *) rm -rf "$tmp"; die "built binary reports '$got', expected grpcurl $version" ;;
    esac
    mv -f "$tmp/grpcurl" "$bin"
    rm -rf "$tmp"
    touch "$dir/.ok"
    echo "get-grpcurl.sh: built $got" >&2
}

if command -v flock >/dev/null 2>&1; then
    exec 9>"$dir/.lock"
    flock 9 || die "cannot lock $dir/.lock"
fi
build
echo "$bin"
