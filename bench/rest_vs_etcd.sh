#!/usr/bin/env bash
# dhashmap REST beside etcd's v3 JSON gateway, on this machine, in one run (`make bench`).
#
# Starts one dhashmap node (LMDB engine) and one etcd node on loopback, each on a fresh
# temporary data dir, preloads 100,000 keys bench%08d with 100-byte values into both, then
# runs wrk (-t2 -c50 -d10s --latency) interleaved: dhashmap PUT, etcd PUT, dhashmap GET,
# etcd range, ROUNDS times.  Prints a Markdown table; raw wrk output goes to
# bench/results/<timestamp>/.  Everything it starts is stopped on exit.
#
# Settings (environment):
#   ROUNDS=2          rounds of the four runs
#   DURATION=10s      wrk -d of each run
#   THREADS=2 CONNS=50  wrk -t / -c
#   DHM_PORT=18080    dhashmap REST port; etcd uses 23790 (client) and 23800 (peer)
#   ETCD_PORT=23790 ETCD_PEER_PORT=23800
#   KEYS=100000       keys to preload (the wrk scripts pick from 100,000: keep it)
#   PROFILE=1         after the rounds, profile the dhashmap node with py-spy under PUT and
#                     GET load (needs `.venv/bin/pip install py-spy`); not part of the table
#   BENCH_TMP=dir     where the temporary data dirs go (default: $TMPDIR or /tmp)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
VENV=${VENV:-$ROOT/.venv}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
DHM_PORT=${DHM_PORT:-18080}
ETCD_PORT=${ETCD_PORT:-23790}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-23800}
KEYS=${KEYS:-100000}
PROFILE=${PROFILE:-0}
DHM_URL="http://127.0.0.1:$DHM_PORT"
ETCD_URL="http://127.0.0.1:$ETCD_PORT"

# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

bench_require
bench_ports_free "$DHM_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"
bench_setup_dirs

# -- start both servers ------------------------------------------------------------------------
cd "$ROOT"
say "starting dhashmap (LMDB) on $DHM_URL, data in $TMP/dhm"
start_dhashmap bench1 "$DHM_PORT" "$TMP/dhm" "$OUT/dhashmap.log"
DHM_PID=$DHM_LAST_PID

say "starting etcd on $ETCD_URL, data in $TMP/etcd"
start_etcd bench "$ETCD_PORT" "$ETCD_PEER_PORT" "$TMP/etcd" "$OUT/etcd.log" \
  "bench=http://127.0.0.1:$ETCD_PEER_PORT"
ETCD_PID=$ETCD_LAST_PID

wait_for dhashmap "$DHM_PID" "$DHM_URL/ready"
wait_for etcd "$ETCD_PID" "$ETCD_URL/health"

# -- preload ------------------------------------------------------------------------------------
say "preloading $KEYS keys into dhashmap"
$PY "$BENCH/preload.py" dhm "$DHM_URL" --keys "$KEYS" || die "preload of dhashmap failed"
say "preloading $KEYS keys into etcd"
$PY "$BENCH/preload.py" etcd "$ETCD_URL" --keys "$KEYS" || die "preload of etcd failed"

dhm_keys=$(dhm_metric "$DHM_URL" dhashmap_storage_keys)
etcd_keys=$(etcd_bench_count "$ETCD_URL")
say "stored keys: dhashmap $dhm_keys, etcd $etcd_keys"
[[ "$dhm_keys" == "$KEYS" && "$etcd_keys" == "$KEYS" ]] || die "preload left the wrong number of keys"

# -- versions -------------------------------------------------------------------------------------
write_versions "$OUT/versions.txt" "wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS rounds"

# -- runs -------------------------------------------------------------------------------------------
metric() { dhm_metric "$DHM_URL" "$1"; }

for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  w0=$(metric dhashmap_storage_writes_total); c0=$(metric dhashmap_storage_commits_total)
  run_wrk "$OUT/r$round-dhashmap-put.txt" dhm-put.lua "$DHM_URL"
  w1=$(metric dhashmap_storage_writes_total); c1=$(metric dhashmap_storage_commits_total)
  echo "$((w1 - w0)) $((c1 - c0))" >"$OUT/r$round-dhashmap-put.commits"
  run_wrk "$OUT/r$round-etcd-put.txt" etcd-put.lua "$ETCD_URL"
  run_wrk "$OUT/r$round-dhashmap-get.txt" dhm-get.lua "$DHM_URL"
  run_wrk "$OUT/r$round-etcd-get.txt" etcd-range.lua "$ETCD_URL"
done

report_rc=0
$PY "$BENCH/report.py" "$OUT" >"$OUT/report.md" || report_rc=$?
cat "$OUT/versions.txt" "$OUT/report.md"

# -- optional profile of the dhashmap node -------------------------------------------------------------
if [[ "$PROFILE" == 1 ]]; then
  for op in put get; do
    say "profiling dhashmap under $op load (py-spy, 8s raw + 8s flame graph)"
    profile_under_load "$DHM_PID" "$op" "dhm-$op.lua" "$DHM_URL"
  done
fi

say "raw output in $OUT"
exit "$report_rc"
