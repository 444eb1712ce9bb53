#!/usr/bin/env bash
# A 3-node dhashmap cluster beside a 3-member etcd cluster, on this machine, in one run
# (`make bench-cluster`).
#
# Starts three dhashmap nodes (LMDB, N=3, R=W=quorum: the defaults) and three etcd members on
# loopback, each on a fresh temporary data dir; waits until every dhashmap node is ready and
# sees all three members alive, and etcd is healthy; preloads 100,000 keys bench%08d with
# 100-byte values into both (a third of the keys through each node / member); verifies them;
# then runs wrk interleaved, ROUNDS times:
#   dhashmap PUT, etcd put, dhashmap GET, etcd range (linearizable), etcd range (serializable).
# Each run spreads the load over the three nodes: three wrk processes at once, one per node,
# CONNS split between them (17+17+16), each -t SPLIT_THREADS; their requests/s are summed and
# the worst p50/p99 of the three is reported.  TARGET=one puts the whole load on node 1 /
# member 1 instead (one wrk, -t THREADS -c CONNS).
# Prints a Markdown table; raw wrk output, logs and LMDB group-commit counts go to
# bench/results/<timestamp>-cluster/.  Everything it starts is stopped on exit.  Exits non-zero
# if any run had non-2xx answers or socket errors (such a run is not a result).
#
# Settings (environment):
#   ROUNDS=2          rounds of the five runs
#   DURATION=10s      wrk -d of each run
#   THREADS=2 CONNS=50  wrk -t / -c (TARGET=one; with TARGET=all CONNS is split)
#   SPLIT_THREADS=1   wrk -t of each of the three wrk processes (TARGET=all)
#   TARGET=all        all: spread over the three nodes; one: everything to the first node
#   DHM_PORT_BASE=18080  dhashmap REST ports 18081..18083
#   DHM_PEER_BASE=17000  dhashmap peer ports 17001..17003
#   ETCD_PORT_BASE=23790 ETCD_PEER_BASE=23800  etcd client 23791..23793, peer 23801..23803
#   MAX_OTHER=0.15    the machine is shared: when other processes use more than this many cores
#   RETRIES=3         during a run, the run is set aside (results/.../noisy/) and repeated, up
#                     to RETRIES times; the last attempt is kept either way, and the table
#                     shows every run's "other load" (bench/cpu_snapshot.py)
#   KEYS=100000       keys to preload (the wrk scripts pick from 100,000: keep it)
#   SAMPLE=1000       random keys read back from every dhashmap node after the preload
#   PROFILE=1         after the rounds, profile dhashmap node 1 with py-spy under the spread
#                     PUT load (PROFILE_OPS="put get" for GET too); not part of the table
#   BENCH_TMP=dir     where the temporary data dirs go (default: $TMPDIR or /tmp)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
VENV=${VENV:-$ROOT/.venv}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-50}
SPLIT_THREADS=${SPLIT_THREADS:-1}
TARGET=${TARGET:-all}
DHM_PORT_BASE=${DHM_PORT_BASE:-18080}
DHM_PEER_BASE=${DHM_PEER_BASE:-17000}
ETCD_PORT_BASE=${ETCD_PORT_BASE:-23790}
ETCD_PEER_BASE=${ETCD_PEER_BASE:-23800}
KEYS=${KEYS:-100000}
SAMPLE=${SAMPLE:-1000}
PROFILE=${PROFILE:-0}
PROFILE_OPS=${PROFILE_OPS:-put}
MAX_OTHER=${MAX_OTHER:-0.15}
RETRIES=${RETRIES:-3}
unset SER  # the etcd range script reads it; only the serializable runs set it

# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

[[ "$TARGET" == all || "$TARGET" == one ]] || die "TARGET must be all or one"
NODES=(1 2 3)
DHM_URLS=() ETCD_URLS=() ports=() seeds=() etcd_cluster=()
for i in "${NODES[@]}"; do
  DHM_URLS+=("http://127.0.0.1:$((DHM_PORT_BASE + i))")
  ETCD_URLS+=("http://127.0.0.1:$((ETCD_PORT_BASE + i))")
  ports+=("$((DHM_PORT_BASE + i))" "$((DHM_PEER_BASE + i))" "$((ETCD_PORT_BASE + i))" "$((ETCD_PEER_BASE + i))")
  seeds+=("127.0.0.1:$((DHM_PEER_BASE + i))")
  etcd_cluster+=("e$i=http://127.0.0.1:$((ETCD_PEER_BASE + i))")
done
SEEDS=$(IFS=,; echo "${seeds[*]}")
ETCD_CLUSTER=$(IFS=,; echo "${etcd_cluster[*]}")

bench_require
bench_ports_free "${ports[@]}"
bench_setup_dirs cluster

# -- start both clusters ---------------------------------------------------------------------------
cd "$ROOT"
DHM_PIDS=() ETCD_PIDS=()
for i in "${NODES[@]}"; do
  say "starting dhashmap node b$i on ${DHM_URLS[i-1]} (peer port $((DHM_PEER_BASE + i))), data in $TMP/dhm$i"
  start_dhashmap "b$i" "$((DHM_PORT_BASE + i))" "$TMP/dhm$i" "$OUT/dhashmap-b$i.log" \
    --peer-port "$((DHM_PEER_BASE + i))" --seed-nodes "$SEEDS"
  DHM_PIDS+=("$DHM_LAST_PID")
done
for i in "${NODES[@]}"; do
  say "starting etcd member e$i on ${ETCD_URLS[i-1]}, data in $TMP/etcd$i"
  start_etcd "e$i" "$((ETCD_PORT_BASE + i))" "$((ETCD_PEER_BASE + i))" "$TMP/etcd$i" "$OUT/etcd-e$i.log" \
    "$ETCD_CLUSTER"
  ETCD_PIDS+=("$ETCD_LAST_PID")
done

for i in "${NODES[@]}"; do
  wait_for "dhashmap b$i" "${DHM_PIDS[i-1]}" "${DHM_URLS[i-1]}/ready"
done
# Every node must see all three members alive.
members_alive() {  # members_alive <url>: prints how many members are alive
  curl -sf --max-time 1 "$1/v1/cluster/members" |
    $PY -c 'import json,sys; print(sum(m.get("state") == "alive" for m in json.load(sys.stdin)["members"]))' \
    2>/dev/null || echo 0
}
for _ in $(seq 150); do
  all=1
  for i in "${NODES[@]}"; do
    kill -0 "${DHM_PIDS[i-1]}" 2>/dev/null || die "dhashmap b$i exited; see $OUT/dhashmap-b$i.log"
    [[ "$(members_alive "${DHM_URLS[i-1]}")" == "${#NODES[@]}" ]] || all=0
  done
  ((all)) && break
  sleep 0.2
done
((all)) || die "the dhashmap nodes did not all see ${#NODES[@]} members alive within 30s"
say "dhashmap: every node sees ${#NODES[@]} members alive"

for i in "${NODES[@]}"; do
  wait_for "etcd e$i" "${ETCD_PIDS[i-1]}" "${ETCD_URLS[i-1]}/health"
done
say "etcd: every member healthy"

# -- preload (a third of the keys through each node / member, at the same time) ------------------
preload() {  # preload <dhm|etcd> <url>...
  local system=$1; shift
  local n=$# i=0 url first last pids=() rc=0
  for url in "$@"; do
    first=$((KEYS * i / n)); last=$((KEYS * (i + 1) / n)); i=$((i + 1))
    $PY "$BENCH/preload.py" "$system" "$url" --first "$first" --keys "$last" --conns 16 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return "$rc"
}
say "preloading $KEYS keys into dhashmap through all three nodes"
preload dhm "${DHM_URLS[@]}" || die "preload of dhashmap failed"
say "preloading $KEYS keys into etcd through all three members"
preload etcd "${ETCD_URLS[@]}" || die "preload of etcd failed"

for i in "${NODES[@]}"; do
  n=$(dhm_metric "${DHM_URLS[i-1]}" dhashmap_storage_keys)
  say "dhashmap b$i stores $n records"
  [[ "$n" == "$KEYS" ]] || die "dhashmap b$i holds $n records, not $KEYS (N=3: every node holds every key)"
done
$PY "$BENCH/verify_keys.py" --keys "$KEYS" --sample "$SAMPLE" "${DHM_URLS[@]}" ||
  die "dhashmap does not hold the preloaded keys"
for i in "${NODES[@]}"; do
  n=$(etcd_bench_count "${ETCD_URLS[i-1]}")
  say "etcd e$i counts $n keys"
  [[ "$n" == "$KEYS" ]] || die "etcd e$i counts $n keys, not $KEYS"
done

# -- versions -----------------------------------------------------------------------------------------
if [[ "$TARGET" == all ]]; then
  load="3 wrk processes at once, one per node, each -t$SPLIT_THREADS -c$((CONNS / 3))..$((CONNS / 3 + 1)) (-c$CONNS in all) -d$DURATION --latency; req/s summed, worst p50/p99 of the three; $ROUNDS rounds"
else
  load="wrk -t$THREADS -c$CONNS -d$DURATION --latency against node 1 / member 1 only; $ROUNDS rounds"
fi
write_versions "$OUT/versions.txt" "$load"
echo "cluster: dhashmap 3 nodes N=3 R=W=quorum (defaults), LMDB; etcd 3 members" >>"$OUT/versions.txt"

# -- runs ---------------------------------------------------------------------------------------------
load_run() {  # load_run <file base> <script> <dhm|etcd>   (wrk scripts read SER, GW, LUA_DIR)
  local base=$1 script=$2 system=$3
  local urls attempt other
  if [[ "$system" == dhm ]]; then urls=("${DHM_URLS[@]}"); else urls=("${ETCD_URLS[@]}"); fi
  for attempt in $(seq 0 "$RETRIES"); do
    [[ "$script" == dhm-put.lua ]] && commits_snapshot >"$TMP/commits0"
    $PY "$BENCH/cpu_snapshot.py" $$ "${DHM_PIDS[@]}" "${ETCD_PIDS[@]}" >"$TMP/cpu0"
    if [[ "$TARGET" == all ]]; then
      SETTLE=0 run_wrk_split "$base" "$script" "${urls[@]}"
    else
      SETTLE=0 run_wrk "$base.txt" "$script" "${urls[0]}"
    fi
    $PY "$BENCH/cpu_snapshot.py" $$ "${DHM_PIDS[@]}" "${ETCD_PIDS[@]}" >"$TMP/cpu1"
    if [[ "$script" == dhm-put.lua ]]; then  # LMDB group commit per node: node writes commits
      commits_snapshot | paste "$TMP/commits0" - | awk '{print $1, $5 - $2, $6 - $3}' >"$base.commits"
    fi
    # CPU other processes took from the machine during the run (the machine is shared)
    $PY "$BENCH/cpu_snapshot.py" --diff "$TMP/cpu0" "$TMP/cpu1" >"$base.cpu"
    other=$(sed -n 's/.*other=\([0-9.]*\).*/\1/p' "$base.cpu")
    say "  cpu: $(cat "$base.cpu")"
    sleep 2  # let queued commits land and the machine settle before the next run
    if awk -v o="$other" -v m="$MAX_OTHER" 'BEGIN{exit !(o <= m)}' || ((attempt == RETRIES)); then
      return 0
    fi
    # Another process took more than MAX_OTHER cores: keep the output aside, run again.
    mkdir -p "$OUT/noisy"
    for f in "$base".*  "$base"-n*.txt; do if [[ -e "$f" ]]; then mv "$f" "$OUT/noisy/a$attempt-$(basename "$f")"; fi; done
    say "  other processes used $other cores during this run (> MAX_OTHER=$MAX_OTHER): running it again in 10s"
    sleep 10
  done
}
commits_snapshot() {  # one line per node: node writes commits
  local i
  for i in "${NODES[@]}"; do
    echo "b$i $(dhm_metric "${DHM_URLS[i-1]}" dhashmap_storage_writes_total) $(dhm_metric "${DHM_URLS[i-1]}" dhashmap_storage_commits_total)"
  done
}

for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  load_run "$OUT/r$round-dhashmap-put" dhm-put.lua dhm
  load_run "$OUT/r$round-etcd-put" etcd-put.lua etcd
  load_run "$OUT/r$round-dhashmap-get" dhm-get.lua dhm
  load_run "$OUT/r$round-etcd-get" etcd-range.lua etcd
  export SER=1
  load_run "$OUT/r$round-etcd-getser" etcd-range.lua etcd
  unset SER
done

report_rc=0
$PY "$BENCH/report.py" "$OUT" >"$OUT/report.md" || report_rc=$?
cat "$OUT/versions.txt" "$OUT/report.md"

# -- optional profile of dhashmap node 1 under the spread load ----------------------------------------
if [[ "$PROFILE" == 1 ]]; then
  for op in $PROFILE_OPS; do
    say "profiling dhashmap b1 under the cluster $op load (py-spy, 8s raw + 8s flame graph)"
    w0=$(dhm_metric "${DHM_URLS[0]}" dhashmap_storage_writes_total)
    c0=$(dhm_metric "${DHM_URLS[0]}" dhashmap_storage_commits_total)
    if [[ "$TARGET" == all ]]; then
      profile_under_load "${DHM_PIDS[0]}" "$op" "dhm-$op.lua" "${DHM_URLS[@]}"
    else
      profile_under_load "${DHM_PIDS[0]}" "$op" "dhm-$op.lua" "${DHM_URLS[0]}"
    fi
    echo "b1 during the profile: $(($(dhm_metric "${DHM_URLS[0]}" dhashmap_storage_writes_total) - w0)) writes in $(($(dhm_metric "${DHM_URLS[0]}" dhashmap_storage_commits_total) - c0)) commits"
  done
fi

say "raw output in $OUT"
exit "$report_rc"
