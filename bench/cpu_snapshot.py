#!/usr/bin/env python3
"""CPU used by the machine and by the benchmark's own processes, to spot foreign load.

    python3 bench/cpu_snapshot.py SCRIPT_PID SERVER_PID... > before
    ... run ...
    python3 bench/cpu_snapshot.py SCRIPT_PID SERVER_PID... > after
    python3 bench/cpu_snapshot.py --diff before after

A snapshot is one line: seconds since boot, busy CPU seconds of the whole machine
(/proc/stat), CPU seconds of the servers (utime+stime of each pid and of its child processes,
such as a node's LMDB commit process) plus the reaped children
of the script (cutime+cstime: the wrk processes once waited for).  ``--diff`` prints the
share of the machine's cores used by other processes during the run, as "other=<cores>"
(0.35 = a third of one core), with the benchmark's own use beside it.
"""

from __future__ import annotations

import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def busy() -> float:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / HZ


def proc_cpu(pid: int, children: bool) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the ")": state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based)
    utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
    return (cutime + cstime if children else utime + stime) / HZ


def children_of(pids: set[int]) -> list[int]:
    """Processes whose parent is one of ``pids`` (a dhashmap node's LMDB commit process)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            found.append(int(entry))
    return found


def main() -> int:
    if sys.argv[1:2] == ["--diff"]:
        (t0, b0, o0), (t1, b1, o1) = (
            [float(x) for x in open(p).read().split()] for p in sys.argv[2:4])
        wall = t1 - t0
        if wall <= 0:
            return 1
        print(f"wall={wall:.1f}s busy={(b1 - b0) / wall:.2f} ours={(o1 - o0) / wall:.2f} "
              f"other={max(0.0, (b1 - b0) - (o1 - o0)) / wall:.2f} cores={os.cpu_count()}")
        return 0
    script, *servers = (int(x) for x in sys.argv[1:])
    with open("/proc/uptime") as f:
        now = float(f.read().split()[0])
    servers += children_of(set(servers))  # the servers' own helpers count as theirs
    ours = proc_cpu(script, children=True) + sum(proc_cpu(p, children=False) for p in servers)
    print(f"{now:.2f} {busy():.2f} {ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
