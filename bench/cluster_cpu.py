#!/usr/bin/env python3
"""CPU per request of a 3-node dhashmap cluster under wrk load, per process.

    python3 bench/cluster_cpu.py [--op put|get] [--duration 10] [--keys 100000] [--src DIR]

Starts three nodes (LMDB, N=3, R=W=quorum) on loopback, preloads ``--keys`` keys through all
three, then runs three wrk processes at once (one per node, 17+17+16 connections, -t1) with
``bench/dhm-put.lua`` or ``dhm-get.lua`` and reads every process's CPU time from ``/proc``
before and after.  Prints requests/s and CPU microseconds per request for each node's reactor
process, each node's LMDB commit process, and wrk, so a change to the request path can be
judged by what it costs rather than by throughput alone (which moves with whatever else the
machine does).  ``--src`` runs the code of another checkout (a ``git worktree`` of an older
commit), with its own ``.venv`` if it has one (another interpreter) and this checkout's
otherwise, to find which change made a request dearer.  The last column is the group-commit
batch (writes per durable commit, from the nodes' ``/metrics``).

Everything it starts is stopped on exit; the data dirs are temporary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HZ = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(rest[11]) / HZ, int(rest[12]) / HZ


def commit_counts(urls: list[str]) -> tuple[float, float]:
    """Durable commits and writes of all the nodes so far (their ``/metrics``)."""
    commits = writes = 0.0
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("dhashmap_storage_commits_total "):
                    commits += float(line.split()[1])
                elif line.startswith("dhashmap_storage_writes_total "):
                    writes += float(line.split()[1])
    return commits, writes


def switches(pid: int) -> int:
    """Voluntary + involuntary context switches of a process's threads so far."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    except OSError:
        pass
    return total


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return found


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as r:
        return json.load(r)


def wait_ready(urls: list[str], procs: list[subprocess.Popen], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                sys.exit(f"cluster_cpu: a node exited with {p.returncode}")
        try:
            if all(sum(m["state"] == "alive" for m in get_json(u + "/v1/cluster/members")["members"]) == len(urls)
                   for u in urls):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    sys.exit("cluster_cpu: the nodes did not all see each other alive within 60 s")


class Cluster:
    """Three nodes running the code of one checkout, on their own ports and data dirs."""

    def __init__(self, src: Path, tmp: Path, port_base: int, extra: list[str]) -> None:
        self.src = src
        self.rest = [port_base + i for i in (1, 2, 3)]
        peer = [port_base + 100 + i for i in (1, 2, 3)]
        seeds = ",".join(f"127.0.0.1:{p}" for p in peer)
        env = dict(os.environ, PYTHONPATH=str(src))
        env.pop("CONFIG_FILE", None)
        # The checkout's own virtualenv if it has one (another interpreter), else this one's.
        twistd = next(v / "bin" / "twistd" for v in (src / ".venv", ROOT / ".venv") if (v / "bin" / "twistd").exists())
        self.procs: list[subprocess.Popen] = []
        for i in range(3):
            cmd = [str(twistd), "-n", "--pidfile=", "dhashmap", "--node-id", f"c{i + 1}", "--port", str(self.rest[i]),
                   "--peer-port", str(peer[i]), "--bind", "127.0.0.1", "--storage", "lmdb",
                   "--data-dir", str(tmp / f"n{i + 1}"), "--seed-nodes", seeds, *extra]
            if (src / "twisted_dhm" / "api" / "grpc_api.py").exists():
                cmd[cmd.index("--bind"):cmd.index("--bind")] = ["--grpc-port", "0"]
            self.procs.append(subprocess.Popen(cmd, cwd=src, env=env, stdout=open(tmp / f"n{i + 1}.log", "wb"),
                                               stderr=subprocess.STDOUT, start_new_session=True))
        self.urls = [f"http://127.0.0.1:{p}" for p in self.rest]

    def preload(self, keys: int) -> list[subprocess.Popen]:
        wait_ready(self.urls, self.procs)
        loaders = []
        for i, url in enumerate(self.urls):
            first, last = keys * i // 3, keys * (i + 1) // 3
            loaders.append(subprocess.Popen([sys.executable, str(HERE / "preload.py"), "dhm", url, "--first",
                                             str(first), "--keys", str(last), "--conns", "16"],
                                            stdout=subprocess.DEVNULL))
        return loaders

    def run(self, op: str, duration: int, profile: Path | None) -> dict:
        nodes = [p.pid for p in self.procs]
        commit = {pid: children(pid) for pid in nodes}
        watched = nodes + [c for cs in commit.values() for c in cs]
        before = {pid: cpu_of(pid) for pid in watched}
        sw_before = {pid: switches(pid) for pid in watched}
        commits_before = commit_counts(self.urls)
        usage = os.times()
        reaped = usage.children_user + usage.children_system
        t0 = time.monotonic()
        wrks = []
        try:
            for i, url in enumerate(self.urls):
                wrks.append(subprocess.Popen(
                    ["wrk", "-t1", f"-c{17 if i < 2 else 16}", f"-d{duration}s", "--latency", "-s",
                     str(HERE / f"dhm-{op}.lua"), url], stdout=subprocess.PIPE, text=True))
            if profile:
                spy = ROOT / ".venv" / "bin" / "py-spy"
                subprocess.run([str(spy), "record", "--pid", str(nodes[0]), "-d", str(max(1, duration - 2)),
                                "--format", "raw", "--nonblocking", "--gil", "-o", str(profile)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            outs = [w.communicate()[0] for w in wrks]
        finally:
            for w in wrks:
                if w.poll() is None:
                    w.kill()
                    w.wait()
        wall = time.monotonic() - t0
        after = {pid: cpu_of(pid) for pid in watched}
        commits_after = commit_counts(self.urls)
        usage = os.times()  # wrk's CPU: what children reaped since the start of the run used
        wrk_cpu = usage.children_user + usage.children_system - reaped
        reqs = 0.0
        for out in outs:
            for line in out.splitlines():
                if line.startswith("Requests/sec:"):
                    reqs += float(line.split()[1]) * wall
                if "Non-2xx" in line or "Socket errors" in line:
                    print("cluster_cpu: " + line.strip(), file=sys.stderr)
        reqs = max(reqs, 1.0)

        def per_req(pids: list[int]) -> dict:
            return {"user": sum(after[p][0] - before[p][0] for p in pids) / reqs * 1e6,
                    "sys": sum(after[p][1] - before[p][1] for p in pids) / reqs * 1e6,
                    "switches": sum(switches(p) - sw_before[p] for p in pids) / reqs}

        return {"rate": reqs / wall, "reactor": per_req(nodes),
                "commit": per_req([c for pid in nodes for c in commit[pid]]), "wrk": wrk_cpu / reqs * 1e6,
                "batch": (commits_after[1] - commits_before[1]) / max(1.0, commits_after[0] - commits_before[0])}

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def show(result: dict) -> str:
    r, c = result["reactor"], result["commit"]
    return (f"{result['rate']:7,.0f} req/s | reactor {r['user'] + r['sys']:6.1f} µs/req (user {r['user']:5.1f}, "
            f"sys {r['sys']:5.1f}, {r['switches']:.2f} sw) | commit {c['user'] + c['sys']:5.1f} "
            f"(user {c['user']:4.1f}, sys {c['sys']:4.1f}) | wrk {result['wrk']:4.1f} | "
            f"all {r['user'] + r['sys'] + c['user'] + c['sys'] + result['wrk']:6.1f} | "
            f"{result['batch']:.1f} writes/commit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", choices=("put", "get"), default="put")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keys", type=int, default=100000)
    ap.add_argument("--src", type=Path, action="append",
                    help="checkout whose code the nodes run (default: this one); give it more than once to "
                         "compare checkouts: each gets a cluster, their runs are interleaved round by round")
    ap.add_argument("--port-base", type=int, default=28080)
    ap.add_argument("--extra", default="", help="more dhashmap flags for every node")
    ap.add_argument("--profile", type=Path, help="also record node 1 with py-spy (raw) into this file; "
                    "py-spy slows the node, so the figures of such a run are not results")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("cluster_cpu: wrk is missing (apt-get install wrk)")
    sources = [s.resolve() for s in (args.src or [ROOT])]
    tmp = Path(tempfile.mkdtemp(prefix="dhm-cpu."))
    clusters: list[Cluster] = []
    try:
        for k, src in enumerate(sources):
            (tmp / str(k)).mkdir()
            clusters.append(Cluster(src, tmp / str(k), args.port_base + 1000 * k, args.extra.split()))
        loaders = [p for cluster in clusters for p in cluster.preload(args.keys)]
        if any(p.wait() for p in loaders):
            sys.exit("cluster_cpu: the preload failed")
        time.sleep(3)  # let the preload's commits and read repairs finish
        results: dict[int, list[dict]] = {k: [] for k in range(len(clusters))}
        for rnd in range(args.rounds):
            for k, cluster in enumerate(clusters):
                result = cluster.run(args.op, args.duration, args.profile if rnd == 0 and k == 0 else None)
                results[k].append(result)
                print(f"round {rnd + 1} {args.op} [{k}] {show(result)}", flush=True)
                time.sleep(2)
        for k, src in enumerate(sources):
            runs = results[k]
            mean = {"rate": sum(r["rate"] for r in runs) / len(runs),
                    "wrk": sum(r["wrk"] for r in runs) / len(runs),
                    "batch": sum(r["batch"] for r in runs) / len(runs),
                    **{part: {f: sum(r[part][f] for r in runs) / len(runs) for f in ("user", "sys", "switches")}
                       for part in ("reactor", "commit")}}
            print(f"mean [{k}] {show(mean)}  ({src})")
        return 0
    finally:
        for cluster in clusters:
            cluster.stop()
        if os.environ.get("KEEP_LOGS"):
            print(f"cluster_cpu: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
