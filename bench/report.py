#!/usr/bin/env python3
"""Turn a results directory of raw wrk outputs into Markdown tables.

    python3 bench/report.py bench/results/<stamp>

Files are named ``r<round>-<system>-<op>.txt`` (wrk --latency output), or
``r<round>-<system>-<op>-n<i>.txt`` when one run was several wrk processes at once (one per
node): those are merged into one run, requests/s and errors summed, p50 and p99 the worst of
the parts (conservative: a merged histogram would give a lower p99).  A
``r<round>-dhashmap-put.commits`` file holds "writes commits" deltas of that run, one line,
or one line per node ("node writes commits").
Exits 3 if any run had non-2xx responses or socket errors: such a run is not a result.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
from pathlib import Path

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
ORDER = [("dhashmap", "put"), ("etcd", "put"), ("dhashmap", "get"), ("etcd", "get"),
         ("etcd", "getser")]
LABEL = {("dhashmap", "put"): "PUT /v1/kv/{key}", ("dhashmap", "get"): "GET /v1/kv/{key}",
         ("etcd", "put"): "POST /v3/kv/put", ("etcd", "get"): "POST /v3/kv/range",
         ("etcd", "getser"): "POST /v3/kv/range (serializable)"}


def ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unknown latency {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse(path: Path) -> dict:
    out = path.read_text()
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (rps and p50 and p99 and total):
        raise ValueError(f"{path}: not a complete wrk --latency output")
    sock_n = [int(x) for x in sock.groups()] if sock else [0, 0, 0, 0]
    return {
        "rps": float(rps.group(1)), "p50": ms(p50.group(1)), "p99": ms(p99.group(1)),
        "requests": int(total.group(1)), "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket": sock_n,
    }


def merge(parts: list[dict]) -> dict:
    """Several wrk processes that ran at the same time, as one run."""
    if len(parts) == 1:
        return parts[0]
    return {
        "rps": sum(p["rps"] for p in parts), "p50": max(p["p50"] for p in parts),
        "p99": max(p["p99"] for p in parts), "requests": sum(p["requests"] for p in parts),
        "non2xx": sum(p["non2xx"] for p in parts),
        "socket": [sum(col) for col in zip(*(p["socket"] for p in parts), strict=True)],
    }


def errors_text(r: dict) -> str:
    parts = []
    if r["non2xx"]:
        parts.append(f"{r['non2xx']} non-2xx")
    names = ("connect", "read", "write", "timeout")
    parts += [f"{n} {k}" for k, n in zip(names, r["socket"], strict=True) if n]
    return ", ".join(parts) if parts else "0"


def main() -> int:
    d = Path(sys.argv[1])
    parts: dict[tuple[int, str, str], list[dict]] = {}
    for f in sorted(d.glob("r*-*-*.txt")):
        m = re.fullmatch(r"r(\d+)-(\w+)-(\w+)(?:-n\d+)?\.txt", f.name)
        if not m:
            continue
        parts.setdefault((int(m.group(1)), m.group(2), m.group(3)), []).append(parse(f))
    runs: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for (rnd, system, op), ps in sorted(parts.items()):
        res = merge(ps)
        cpu = d / f"r{rnd}-{system}-{op}.cpu"
        if cpu.exists():
            m = re.search(r"other=([\d.]+)", cpu.read_text())
            res["other"] = float(m.group(1)) if m else None
        runs.setdefault((system, op), []).append((rnd, res))
    has_cpu = any("other" in res for v in runs.values() for _, res in v)
    order = ORDER + sorted(k for k in runs if k not in ORDER)
    load = "wrk -t2 -c50 -d10s"
    versions = d / "versions.txt"
    if versions.exists():
        for line in versions.read_text().splitlines():
            if line.startswith("load: "):
                load = line[len("load: "):]
    bad = False

    print(f"Per run ({load}; random key of 100,000, 100-byte values):\n")
    print("| round | system | operation | requests/s | p50 (ms) | p99 (ms) | errors |"
          + (" other load (cores) |" if has_cpu else ""))
    print("|---|---|---|---:|---:|---:|---|" + ("---:|" if has_cpu else ""))
    rounds = sorted({r for v in runs.values() for r, _ in v})
    for rnd in rounds:
        for key in order:
            for r_, res in runs.get(key, []):
                if r_ == rnd:
                    bad |= errors_text(res) != "0"
                    print(f"| {rnd} | {key[0]} | {LABEL.get(key, key[1])} | {res['rps']:,.0f} | "
                          f"{res['p50']:.2f} | {res['p99']:.2f} | {errors_text(res)} |"
                          + (f" {res.get('other') or 0:.2f} |" if has_cpu else ""))

    print("\nSummary (median of the rounds; requests/s range in brackets):\n")
    print("| system | operation | requests/s | p50 (ms) | p99 (ms) | errors |")
    print("|---|---|---:|---:|---:|---|")
    for key in order:
        rs = [res for _, res in runs.get(key, [])]
        if not rs:
            continue
        rps = [x["rps"] for x in rs]
        errs = sum(x["non2xx"] + sum(x["socket"]) for x in rs)
        print(f"| {key[0]} | {LABEL.get(key, key[1])} | {statistics.median(rps):,.0f} "
              f"({min(rps):,.0f}–{max(rps):,.0f}) | {statistics.median(x['p50'] for x in rs):.2f} | "
              f"{statistics.median(x['p99'] for x in rs):.2f} | {errs} |")

    # dhashmap against etcd round by round: each pair ran back to back, so its ratio is the
    # fairest figure on a machine whose speed drifts between rounds.
    pairs = [("PUT", ("dhashmap", "put"), ("etcd", "put")),
             ("GET / linearizable range", ("dhashmap", "get"), ("etcd", "get")),
             ("GET / serializable range", ("dhashmap", "get"), ("etcd", "getser"))]
    lines = []
    for name, ours, theirs in pairs:
        a, b = dict(runs.get(ours, [])), dict(runs.get(theirs, []))
        ratios = [a[r]["rps"] / b[r]["rps"] for r in rounds if r in a and r in b and b[r]["rps"]]
        if ratios:
            lines.append(f"- {name}: " + ", ".join(f"{x:.2f}" for x in ratios)
                         + f" (median {statistics.median(ratios):.2f})")
    if lines:
        print("\ndhashmap requests/s over etcd's, round by round:\n")
        print("\n".join(lines))

    batches = []
    for f in sorted(d.glob("r*-dhashmap-put.commits"), key=lambda f: int(f.name[1:].split("-")[0])):
        rnd = f.name.split("-")[0]
        for line in f.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2:
                fields = ["", *fields]
            if len(fields) == 3:
                batches.append((rnd, fields[0], int(fields[1]), int(fields[2])))
    if batches:
        print("\ndhashmap LMDB group commit during the PUT runs (writes / commits = batch size):\n")
        for rnd, node, writes, commits in batches:
            size = writes / commits if commits else float("nan")
            where = f" {node}" if node else ""
            print(f"- {rnd}{where}: {writes:,} writes in {commits:,} commits = {size:.1f} writes per commit")

    if has_cpu:
        print("\nother load: CPU (in cores, of the machine's "
              f"{os.cpu_count()}) used during the run by processes other than the servers and "
              "wrk (bench/cpu_snapshot.py); a run with much of it is not comparable.")
    if bad:
        print("\nWARNING: some runs had non-2xx responses or socket errors; "
              "their numbers are not results (see the raw output).")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
