# Shared shell helpers of the benchmark scripts (sourced, not run):
# rest_vs_etcd.sh (one node each) and cluster_vs_etcd.sh (three nodes each).
#
# The sourcing script sets ROOT, BENCH, VENV, THREADS, CONNS, DURATION before calling these,
# and OUT / TMP via bench_setup_dirs.  Every process it starts goes into PIDS (bench_spawn) and
# is stopped on exit, also on Ctrl-C or TERM; the temporary dir is removed.

PY=${PY:-python3}
PIDS=()

die() { echo "bench: $*" >&2; exit 1; }
say() { echo "bench: $*" >&2; }

# Check tools (never installs them).  Extra args: more tools to require.
bench_require() {
  local missing=() tool
  for tool in wrk etcd curl python3 "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]})); then
    die "missing: ${missing[*]}. On Debian/Ubuntu: sudo apt-get install -y wrk etcd-server curl python3"
  fi
  [[ -x "$VENV/bin/twistd" ]] || die "no $VENV/bin/twistd: run 'make' (or 'make bench', which sets up the venv)"
  if [[ "${PROFILE:-0}" == 1 && ! -x "$VENV/bin/py-spy" ]]; then
    die "PROFILE=1 needs py-spy: $VENV/bin/pip install py-spy"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Die if any of the given ports is taken on 127.0.0.1.
bench_ports_free() {
  local p
  for p in "$@"; do
    if port_busy "$p"; then die "port $p on 127.0.0.1 is already in use (see the port settings at the top of $0)"; fi
  done
}

# TMP: temporary data dirs (removed on exit); OUT: bench/results/<stamp>[-suffix] (kept).
bench_setup_dirs() {  # bench_setup_dirs [suffix]
  TMP=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/dhm-bench.XXXXXX")
  OUT="$BENCH/results/$(date +%Y%m%d-%H%M%S)${1:+-$1}"
  mkdir -p "$OUT"
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

bench_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -n "${TMP:-}" ]] && rm -rf "$TMP"
  exit "$rc"
}

# Poll until a URL answers 200 (curl args after the pid), while pid lives; 30 s at most.
wait_for() {  # wait_for <what> <pid> <curl args...>
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

# Start a dhashmap node in the background; its pid goes to PIDS and to DHM_LAST_PID.
start_dhashmap() {  # start_dhashmap <node-id> <rest-port> <data-dir> <log> [more dhashmap flags]
  local id=$1 port=$2 dir=$3 logf=$4; shift 4
  (cd "$ROOT" && exec env -u CONFIG_FILE "$VENV/bin/twistd" -n --pidfile= dhashmap --node-id "$id" \
    --port "$port" --grpc-port 0 --bind 127.0.0.1 --storage lmdb --data-dir "$dir" "$@") >"$logf" 2>&1 &
  DHM_LAST_PID=$!
  PIDS+=("$DHM_LAST_PID")
}

# Start an etcd member in the background; its pid goes to PIDS and to ETCD_LAST_PID.
start_etcd() {  # start_etcd <name> <client-port> <peer-port> <data-dir> <log> <initial-cluster>
  local name=$1 cport=$2 pport=$3 dir=$4 logf=$5 cluster=$6
  etcd --name "$name" --data-dir "$dir" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --initial-cluster-token "dhm-bench-$$" >"$logf" 2>&1 &
  ETCD_LAST_PID=$!
  PIDS+=("$ETCD_LAST_PID")
}

b64() { printf '%s' "$1" | base64 -w0; }

# Keys stored in etcd under the prefix "bench" (count_only range).
etcd_bench_count() {  # etcd_bench_count <url>
  curl -sf -X POST "$1/v3/kv/range" \
    -d "{\"key\":\"$(b64 bench)\",\"range_end\":\"$(b64 benci)\",\"count_only\":true}" |
    $PY -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))'
}

# One metric of a dhashmap node, as an integer (sum over label sets).
dhm_metric() {  # dhm_metric <url> <metric name>
  curl -sf "$1/metrics" | awk -v m="$2" '$1==m{s+=$2} END{printf "%d", s}'
}

# Tool and software versions, to the given file.
write_versions() {  # write_versions <file> <load description>
  {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
    echo "python: $("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    echo "twisted: $("$VENV/bin/python" -c 'import twisted; print(twisted.__version__)')"
    echo "lmdb (py-lmdb): $("$VENV/bin/python" -c 'import lmdb; print(lmdb.__version__)')"
    echo "dhashmap: $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "etcd: $(etcd --version | awk '/etcd Version/{print $3}') ($(etcd --version | awk '/Go Version/{print $3}'))"
    echo "wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    echo "load: $2"
  } >"$1"
}

# One line on stderr about a finished wrk output file.
wrk_summary() {  # wrk_summary <file>
  local file=$1 line errs
  line=$(awk '/^Requests\/sec/{print $2}' "$file")
  errs=$(grep -E 'Non-2xx|Socket errors' "$file" | tr '\n' ' ' || true)
  say "  $(basename "$file" .txt): ${line:-?} req/s ${errs:+ -- $errs}"
}

# One bounded wrk run (THREADS/CONNS/DURATION) into a file, then a pause to settle.
run_wrk() {  # run_wrk <file> <script> <url> [extra wrk args]
  local file=$1 script=$2 url=$3; shift 3
  LUA_DIR="$BENCH" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$BENCH/$script" "$@" "$url" \
    >"$file" 2>&1 || say "wrk exited with an error; see $file"
  wrk_summary "$file"
  sleep "${SETTLE:-2}"  # let queued commits land and the machine settle before the next run
}

# Several wrk processes at once, one per URL, CONNS split between them, each with -t
# SPLIT_THREADS; outputs <base>-n1.txt, <base>-n2.txt, ...  (report.py merges them).
run_wrk_split() {  # run_wrk_split <base> <script> <url>...
  local base=$1 script=$2; shift 2
  local n=$# i=0 url c pids=()
  for url in "$@"; do
    i=$((i + 1))
    c=$((CONNS / n + (i <= CONNS % n ? 1 : 0)))
    LUA_DIR="$BENCH" wrk -t"${SPLIT_THREADS:-1}" -c"$c" -d"$DURATION" --latency -s "$BENCH/$script" "$url" \
      >"$base-n$i.txt" 2>&1 &
    pids+=($!)
    PIDS+=($!)
  done
  i=0
  for pid in "${pids[@]}"; do
    i=$((i + 1))
    wait "$pid" || say "wrk exited with an error; see $base-n$i.txt"
  done
  for i in $(seq "$n"); do wrk_summary "$base-n$i.txt"; done
  sleep "${SETTLE:-2}"
}

# Profile a process with py-spy (raw collapsed stacks + flame graph) while wrk loads a URL.
profile_under_load() {  # profile_under_load <pid> <name> <script> <url>...
  local pid=$1 name=$2 script=$3; shift 3
  local wpids=() url n=$# i=0 c
  for url in "$@"; do
    i=$((i + 1))
    c=$((CONNS / n + (i <= CONNS % n ? 1 : 0)))
    LUA_DIR="$BENCH" wrk -t"${SPLIT_THREADS:-$THREADS}" -c"$c" -d20s --latency -s "$BENCH/$script" "$url" \
      >"$OUT/profile-$name-wrk-n$i.txt" 2>&1 &
    wpids+=($!)
    PIDS+=($!)
  done
  sleep 1
  "$VENV/bin/py-spy" record --pid "$pid" -d 8 --threads --format raw \
    -o "$OUT/profile-$name.txt" >/dev/null 2>&1 || say "py-spy failed (needs ptrace rights)"
  "$VENV/bin/py-spy" record --pid "$pid" -d 8 --format flamegraph \
    -o "$OUT/profile-$name.svg" >/dev/null 2>&1 || true
  for p in "${wpids[@]}"; do wait "$p" || true; done
  if [[ -s "$OUT/profile-$name.txt" ]]; then
    local rates
    rates=$(cat "$OUT"/profile-"$name"-wrk-n*.txt | awk '/^Requests\/sec/{s+=$2} END{printf "%.0f", s}')
    echo
    echo "### py-spy: $name"
    echo "wrk during the profile: $rates req/s in all (py-spy slows the node)"
    $PY "$BENCH/pyspy_top.py" "$OUT/profile-$name.txt" --thread MainThread | tee "$OUT/profile-$name-top.md"
  fi
}
