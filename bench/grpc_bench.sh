#!/usr/bin/env bash
# gRPC and native-protocol figures of issue 6 (`make bench-grpc`): one node, or a 3-node cluster.
#
# Starts dhashmap node(s) on loopback (LMDB, fresh temporary data dirs), preloads 100,000 keys
# bench%08d with 100-byte values through REST, then runs, each for DURATION, each ROUNDS times:
#   ghz  KV.Get / KV.Put       50 concurrent calls, one connection, key bench00000001, 100-byte value
#   wrk  GET / PUT /v1/kv/...  -t2 -c50, random keys of the 100,000 (bench/dhm-*.lua)
#   bench/nativeload           native protocol through the Go client, 50 requests in flight, random keys
# and, for one node, the floors on the same machine in the same run:
#   bench/grpc_plain.py        plain grpc.aio with a dict, same ghz load    (goal: node >= 90 % of it)
#   bench/grpc_plain.py --lmdb plain grpc.aio writing durably to LMDB (group commit), same load
#   redis-benchmark -t get -c 50 -n REDIS_N against a local redis-server     (goal: native GET >= it)
# Each run is checked for foreign load (bench/cpu_snapshot.py): when other processes used more
# than MAX_OTHER cores it is run again (RETRIES times) and the load is recorded beside the figure.
# Prints a Markdown table; raw output goes to bench/results/<time>-grpc/.  Everything it starts
# is stopped on exit.
#
# Settings (environment):
#   NODES=1           1, or 3 for a cluster (N=3, R=W=quorum; load against node 1)
#   REACTOR=          twistd -r value for the nodes (empty: what plain `twistd dhashmap` runs, see docs/grpc.md)
#   NODE_FLAGS=       more dhashmap flags for every node (word-split)
#   ROUNDS=2 DURATION=10  seconds per run (at most 30)
#   OPS="grpc rest native plain plainlmdb redis"   what to run
#   MAX_OTHER=0.15 RETRIES=2
#   ports: REST 18181.., native 17101.., gRPC 19191.., plain gRPC 19290 (dict) and 19291 (LMDB), redis 16379
# Needs: wrk, curl, go (builds bench/nativeload), ghz v0.121.0 (GHZ=path, else ~/.cache/dhashmap/ghz,
# /tmp/gobin/ghz or PATH; `GOBIN=~/.cache/dhashmap go install github.com/bojand/ghz/cmd/ghz@v0.121.0`),
# redis-server and redis-benchmark for the redis run (apt-get install redis-server redis-tools).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
VENV=${VENV:-$ROOT/.venv}
NODES=${NODES:-1}
REACTOR=${REACTOR:-}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10}
OPS=${OPS:-grpc rest native plain plainlmdb redis}
MAX_OTHER=${MAX_OTHER:-0.15}
RETRIES=${RETRIES:-2}
REDIS_N=${REDIS_N:-200000}
REDIS_PORT=${REDIS_PORT:-16379}
PLAIN_PORT=${PLAIN_PORT:-19290}
PLAIN_LMDB_PORT=$((PLAIN_PORT + 1))
THREADS=2 CONNS=50
((DURATION <= 30)) || { echo "DURATION is bounded to 30 s" >&2; exit 2; }

# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

GHZ=${GHZ:-$(command -v ~/.cache/dhashmap/ghz /tmp/gobin/ghz ghz 2>/dev/null | head -1 || true)}
[[ -x "$GHZ" ]] || die "no ghz: GOBIN=~/.cache/dhashmap go install github.com/bojand/ghz/cmd/ghz@v0.121.0"
for tool in wrk curl go; do command -v "$tool" >/dev/null || die "missing: $tool"; done
[[ -x "$VENV/bin/twistd" ]] || die "no $VENV/bin/twistd: run make first"
[[ " $OPS " != *" redis "* || $NODES != 1 ]] || command -v redis-server >/dev/null || die "missing: redis-server"

REST=() NATIVE=() GRPC=() ports=() seeds=()
for i in $(seq "$NODES"); do
  REST+=("$((18180 + i))") NATIVE+=("$((17100 + i))") GRPC+=("$((19190 + i))")
  ports+=("$((18180 + i))" "$((17100 + i))" "$((19190 + i))")
  seeds+=("127.0.0.1:$((17100 + i))")
done
bench_ports_free "${ports[@]}" "$PLAIN_PORT" "$PLAIN_LMDB_PORT" "$REDIS_PORT"
bench_setup_dirs "grpc-n$NODES${REACTOR:+-$REACTOR}"
cd "$ROOT"

(cd bench/nativeload && go build -o "$TMP/nativeload" .) || die "cannot build bench/nativeload"

SERVER_PIDS=()
for i in $(seq "$NODES"); do
  extra=()
  ((NODES > 1)) && extra=(--seed-nodes "$(IFS=,; echo "${seeds[*]}")")
  (exec env -u CONFIG_FILE "$VENV/bin/twistd" -n --pidfile= ${REACTOR:+-r "$REACTOR"} dhashmap \
    --node-id "g$i" --port "${REST[i-1]}" --peer-port "${NATIVE[i-1]}" --grpc-port "${GRPC[i-1]}" \
    --bind 127.0.0.1 --storage lmdb --data-dir "$TMP/dhm$i" "${extra[@]}" ${NODE_FLAGS:-}) >"$OUT/dhashmap-g$i.log" 2>&1 &
  PIDS+=($!) SERVER_PIDS+=($!)
done
for i in $(seq "$NODES"); do wait_for "dhashmap g$i" "${SERVER_PIDS[i-1]}" "http://127.0.0.1:${REST[i-1]}/ready"; done
if ((NODES > 1)); then
  for _ in $(seq 150); do
    n=$(curl -sf "http://127.0.0.1:${REST[0]}/v1/cluster/members" |
      $PY -c 'import json,sys; print(sum(m["state"] == "alive" for m in json.load(sys.stdin)["members"]))' || echo 0)
    [[ "$n" == "$NODES" ]] && break
    sleep 0.2
  done
  [[ "$n" == "$NODES" ]] || die "node 1 does not see $NODES members alive"
fi
say "preloading 100000 keys"
$PY "$BENCH/preload.py" dhm "http://127.0.0.1:${REST[0]}" --conns 16 >/dev/null || die "preload failed"
grep -m1 "reactor class" "$OUT/dhashmap-g1.log" | sed 's/.*reactor class: //' >"$OUT/reactor.txt" || true
write_versions "$OUT/versions.txt" "see bench/grpc_bench.sh; NODES=$NODES ROUNDS=$ROUNDS DURATION=${DURATION}s"
{
  echo "reactor: $(cat "$OUT/reactor.txt")"
  echo "ghz: $("$GHZ" --version 2>&1)"
  echo "go: $(go version | awk '{print $3}')"
  command -v redis-server >/dev/null && echo "redis: $(redis-server --version | awk '{print $3}')"
} >>"$OUT/versions.txt" 2>/dev/null

KEY=$(printf bench00000001 | base64)
VALUE=$(head -c 100 /dev/zero | tr '\0' v | base64 -w0)
ghz_run() {  # ghz_run <port> <Get|Put> <out>
  local data="{\"key\":\"$KEY\"}"
  [[ $2 == Put ]] && data="{\"key\":\"$KEY\",\"value\":\"$VALUE\"}"
  "$GHZ" --insecure --proto proto/dhashmap/v1/kv.proto --import-paths proto/dhashmap/v1 \
    --call "dhashmap.v1.KV.$2" -d "$data" -c 50 -z "${DURATION}s" "127.0.0.1:$1" >"$3" 2>&1 || true
  # "use of closed network connection" (Unavailable) and "the client connection is closing" (Canceled)
  # errors are the calls in flight when ghz stops at -z: not counted
  awk '/Requests\/sec/{r=$2} /50 % in/{p50=$4} /99 % in/{p99=$4}
       /^ +\[/ && !/\[OK\]/ {e+=$2} /use of closed network connection|the client connection is closing/ {gsub(/[^0-9]/, "", $1); c+=$1}
       END{printf "%.0f %s %s %d\n", r, p50, p99, e - c}' "$3"
}
wrk_run() {  # wrk_run <port> <script> <out>
  LUA_DIR="$BENCH" wrk -t2 -c50 -d"${DURATION}s" --latency -s "$BENCH/$1" "http://127.0.0.1:$2" >"$3" 2>&1 || true
  awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2} /Non-2xx|Socket errors/{e=1}
       function ms(x){ if (x ~ /us$/) return sprintf("%.2f", x/1000); if (x ~ /ms$/) return x+0; return x*1000 }
       END{printf "%.0f %s %s %d\n", r, ms(p50), ms(p99), e}' "$3"
}
native_run() {  # native_run <port> <get|put> <out>
  "$TMP/nativeload" -addr "127.0.0.1:$1" -op "$2" -c 50 -d "${DURATION}s" >"$3" 2>&1 || true
  sed -n 's/.*rps=\([0-9]*\) p50_ms=\([0-9.]*\) p99_ms=\([0-9.]*\) errors=\([0-9]*\).*/\1 \2 \3 \4/p' "$3"
}
redis_run() {  # redis_run <out>
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t get -c 50 -n "$REDIS_N" -d 100 -r 100000 >"$1" 2>&1 || true
  awk '/throughput summary/{r=$3} /latency summary/{getline; getline; p50=$3; p99=$5}
       END{printf "%.0f %s %s 0\n", r, p50, p99}' "$1"
}

RESULTS="$OUT/results.txt"
measure() {  # measure <label> <server pids> <command...>: one line "label rps p50 p99 errors other"
  local label=$1 pids=$2 attempt line other; shift 2
  for attempt in $(seq 0 "$RETRIES"); do
    # shellcheck disable=SC2086  # pids: one or more (every node of a cluster works for each request)
    $PY "$BENCH/cpu_snapshot.py" $$ $pids >"$TMP/cpu0"
    line=$("$@")
    # shellcheck disable=SC2086
    $PY "$BENCH/cpu_snapshot.py" $$ $pids >"$TMP/cpu1"
    other=$($PY "$BENCH/cpu_snapshot.py" --diff "$TMP/cpu0" "$TMP/cpu1" | sed -n 's/.*other=\([0-9.]*\).*/\1/p')
    sleep 2
    if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN{exit !(o <= m)}' || ((attempt == RETRIES)); then break; fi
    say "  $label: other processes used $other cores (> MAX_OTHER=$MAX_OTHER): again in 10 s"
    sleep 10
  done
  say "  $label: $line other=$other"
  echo "$label $line $other" >>"$RESULTS"
}

if [[ " $OPS " == *" plain "* && $NODES == 1 ]]; then
  "$VENV/bin/python" "$BENCH/grpc_plain.py" --port "$PLAIN_PORT" >"$OUT/plain.log" 2>&1 &
  PLAIN_PID=$!; PIDS+=("$PLAIN_PID")
fi
if [[ " $OPS " == *" plainlmdb "* && $NODES == 1 ]]; then
  "$VENV/bin/python" "$BENCH/grpc_plain.py" --port "$PLAIN_LMDB_PORT" --lmdb "$TMP/plain-lmdb" >"$OUT/plain-lmdb.log" 2>&1 &
  PLAIN_LMDB_PID=$!; PIDS+=("$PLAIN_LMDB_PID")
fi
if [[ " $OPS " == *" redis "* && $NODES == 1 ]]; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --daemonize no \
    >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
fi
sleep 1
for port in ${PLAIN_PID:+"$PLAIN_PORT"} ${PLAIN_LMDB_PID:+"$PLAIN_LMDB_PORT"}; do  # the key and value the node holds
  "$GHZ" --insecure --proto proto/dhashmap/v1/kv.proto --import-paths proto/dhashmap/v1 --call dhashmap.v1.KV.Put \
    -d "{\"key\":\"$KEY\",\"value\":\"$VALUE\"}" -n 1 "127.0.0.1:$port" >/dev/null
done
if [[ -n "${REDIS_PID:-}" ]]; then
  redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t set -c 50 -n 200000 -d 100 -r 100000 -q >/dev/null
fi

N1="${SERVER_PIDS[*]}"  # the nodes: their CPU is the benchmark's own, not foreign load
for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  for op in $OPS; do
    case $op in
      grpc)
        measure "dhashmap-grpc-Get" "$N1" ghz_run "${GRPC[0]}" Get "$OUT/r$round-grpc-get.txt"
        measure "dhashmap-grpc-Put" "$N1" ghz_run "${GRPC[0]}" Put "$OUT/r$round-grpc-put.txt" ;;
      rest)
        measure "dhashmap-rest-GET" "$N1" wrk_run dhm-get.lua "${REST[0]}" "$OUT/r$round-rest-get.txt"
        measure "dhashmap-rest-PUT" "$N1" wrk_run dhm-put.lua "${REST[0]}" "$OUT/r$round-rest-put.txt" ;;
      native)
        measure "dhashmap-native-GET" "$N1" native_run "${NATIVE[0]}" get "$OUT/r$round-native-get.txt"
        measure "dhashmap-native-PUT" "$N1" native_run "${NATIVE[0]}" put "$OUT/r$round-native-put.txt" ;;
      plain)
        if [[ -n "${PLAIN_PID:-}" ]]; then
          measure "plain-grpc.aio-Get" "$PLAIN_PID" ghz_run "$PLAIN_PORT" Get "$OUT/r$round-plain-get.txt"
          measure "plain-grpc.aio-Put" "$PLAIN_PID" ghz_run "$PLAIN_PORT" Put "$OUT/r$round-plain-put.txt"
        fi ;;
      plainlmdb)
        if [[ -n "${PLAIN_LMDB_PID:-}" ]]; then
          measure "plain-grpc.aio+LMDB-Get" "$PLAIN_LMDB_PID" ghz_run "$PLAIN_LMDB_PORT" Get "$OUT/r$round-plainlmdb-get.txt"
          measure "plain-grpc.aio+LMDB-Put" "$PLAIN_LMDB_PID" ghz_run "$PLAIN_LMDB_PORT" Put "$OUT/r$round-plainlmdb-put.txt"
        fi ;;
      redis)
        [[ -n "${REDIS_PID:-}" ]] && measure "redis-GET" "$REDIS_PID" redis_run "$OUT/r$round-redis-get.txt" ;;
      *) die "unknown op $op" ;;
    esac
  done
done

cat "$OUT/versions.txt"
echo
$PY - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, rps, p50, p99, errors, other = line.split()
    rows.setdefault(label, []).append((float(rps), float(p50 or 0), float(p99 or 0), int(errors), other))
print("| what | requests/s (median; range) | p50 ms | p99 ms | errors | other load (cores), per run |")
print("|---|---:|---:|---:|---:|---|")
for label, runs in rows.items():
    rps = [r[0] for r in runs]
    med = lambda k: statistics.median(r[k] for r in runs)
    print(f"| {label.replace('-', ' ')} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) "
          f"| {med(1):.2f} | {med(2):.2f} | {sum(r[3] for r in runs)} | {' / '.join(r[4] for r in runs)} |")
PY
say "raw output in $OUT"
