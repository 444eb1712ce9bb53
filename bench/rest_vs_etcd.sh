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
PY=python3

DHM_URL="http://127.0.0.1:$DHM_PORT"
ETCD_URL="http://127.0.0.1:$ETCD_PORT"

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

# -- prerequisites (checked, never installed here) -----------------------------------------
missing=()
for tool in wrk etcd curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  die "missing: ${missing[*]}. On Debian/Ubuntu: sudo apt-get install -y wrk etcd-server curl python3"
fi
[[ -x "$VENV/bin/twistd" ]] || die "no $VENV/bin/twistd: run 'make' (or 'make bench', which sets up the venv)"
if [[ "$PROFILE" == 1 && ! -x "$VENV/bin/py-spy" ]]; then
  die "PROFILE=1 needs py-spy: $VENV/bin/pip install py-spy"
fi
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$DHM_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT"; do
  if port_busy "$p"; then die "port $p on 127.0.0.1 is already in use (set DHM_PORT/ETCD_PORT/ETCD_PEER_PORT)"; fi
done

# -- temp dirs, results, cleanup -------------------------------------------------------------
TMP=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/dhm-bench.XXXXXX")
OUT="$BENCH/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Poll until $1 answers with HTTP status $2 (curl args after), while pid $3 lives.
wait_for() {
  local what=$1 pid=$2; shift 2
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || die "$what exited while starting; see its log in $OUT"
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" || true)" == 200 ]]; then
      return 0
    fi
    sleep 0.2
  done
  die "$what did not answer within 30s; see its log in $OUT"
}

# -- start both servers ------------------------------------------------------------------------
cd "$ROOT"
say "starting dhashmap (LMDB) on $DHM_URL, data in $TMP/dhm"
env -u CONFIG_FILE "$VENV/bin/twistd" -n --pidfile= dhashmap --node-id bench1 --port "$DHM_PORT" \
  --bind 127.0.0.1 --storage lmdb --data-dir "$TMP/dhm" >"$OUT/dhashmap.log" 2>&1 &
DHM_PID=$!
PIDS+=("$DHM_PID")

say "starting etcd on $ETCD_URL, data in $TMP/etcd"
etcd --name bench --data-dir "$TMP/etcd" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" >"$OUT/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")

wait_for dhashmap "$DHM_PID" "$DHM_URL/ready"
wait_for etcd "$ETCD_PID" "$ETCD_URL/health"

# -- preload ------------------------------------------------------------------------------------
b64() { printf '%s' "$1" | base64 -w0; }
say "preloading $KEYS keys into dhashmap"
$PY "$BENCH/preload.py" dhm "$DHM_URL" --keys "$KEYS" || die "preload of dhashmap failed"
say "preloading $KEYS keys into etcd"
$PY "$BENCH/preload.py" etcd "$ETCD_URL" --keys "$KEYS" || die "preload of etcd failed"

dhm_keys=$(curl -sf "$DHM_URL/metrics" | awk '/^dhashmap_storage_keys /{printf "%d", $2}')
etcd_keys=$(curl -sf -X POST "$ETCD_URL/v3/kv/range" \
  -d "{\"key\":\"$(b64 bench)\",\"range_end\":\"$(b64 benci)\",\"count_only\":true}" |
  $PY -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))')
say "stored keys: dhashmap $dhm_keys, etcd $etcd_keys"
[[ "$dhm_keys" == "$KEYS" && "$etcd_keys" == "$KEYS" ]] || die "preload left the wrong number of keys"

# -- versions -------------------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
  echo "python: $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
  echo "twisted: $("$VENV/bin/python" -c 'import twisted; print(twisted.__version__)')"
  echo "lmdb (py-lmdb): $("$VENV/bin/python" -c 'import lmdb; print(lmdb.__version__)')"
  echo "dhashmap: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
  echo "etcd: $(etcd --version | awk '/etcd Version/{print $3}') ($(etcd --version | awk '/Go Version/{print $3}'))"
  echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
  echo "load: wrk -t$THREADS -c$CONNS -d$DURATION --latency, $ROUNDS rounds"
} >"$OUT/versions.txt"

# -- runs -------------------------------------------------------------------------------------------
metric() { curl -sf "$DHM_URL/metrics" | awk -v m="$1" '$1==m{printf "%d", $2}'; }

run_wrk() {  # run_wrk <file> <script> <url> [extra wrk args]
  local file=$1 script=$2 url=$3; shift 3
  LUA_DIR="$BENCH" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$BENCH/$script" "$@" "$url" \
    >"$file" 2>&1 || say "wrk exited with an error; see $file"
  local line errs
  line=$(awk '/^Requests\/sec/{print $2}' "$file")
  errs=$(grep -E 'Non-2xx|Socket errors' "$file" | tr '\n' ' ' || true)
  say "  $(basename "$file" .txt): ${line:-?} req/s ${errs:+ -- $errs}"
  sleep 2  # let queued commits land and the machine settle before the next run
}

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
    LUA_DIR="$BENCH" wrk -t"$THREADS" -c"$CONNS" -d20s --latency -s "$BENCH/dhm-$op.lua" "$DHM_URL" \
      >"$OUT/profile-$op-wrk.txt" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
    sleep 1
    "$VENV/bin/py-spy" record --pid "$DHM_PID" -d 8 --threads --format raw \
      -o "$OUT/profile-$op.txt" >/dev/null 2>&1 || say "py-spy failed (needs ptrace rights)"
    "$VENV/bin/py-spy" record --pid "$DHM_PID" -d 8 --format flamegraph \
      -o "$OUT/profile-$op.svg" >/dev/null 2>&1 || true
    wait "$WRK_PID" || true
    if [[ -s "$OUT/profile-$op.txt" ]]; then
      echo
      echo "### py-spy: dhashmap under $op load"
      echo "wrk during the profile: $(awk '/^Requests\/sec/{print $2}' "$OUT/profile-$op-wrk.txt") req/s (py-spy slows the node)"
      $PY "$BENCH/pyspy_top.py" "$OUT/profile-$op.txt" --thread MainThread | tee "$OUT/profile-$op-top.md"
    fi
  done
fi

say "raw output in $OUT"
exit "$report_rc"
