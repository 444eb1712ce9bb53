#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile.

    python3 bench/pyspy_top.py profile.txt [--top 15] [--thread SUBSTRING]

Prints, as Markdown, the share of samples per thread, then the functions with the
most samples of their own ("self": the function was the innermost frame) and with
the most samples in total ("inclusive": the function was anywhere on the stack).
Shares are of all samples of the chosen threads.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

# Frames every reactor-thread sample passes through: left out of the inclusive list.
SCAFFOLD = ("twisted/application/", "twisted/scripts/", "twisted/python/context.py",
            "twisted/python/log.py", "twisted/internet/base.py", "<module>", "threading.py",
            "twisted/_threads/", "twisted/python/threadpool.py")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    if path.endswith("twistd"):
        return "<module> (twistd)"
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--thread", default=None, help="only threads whose label contains this")
    args = ap.parse_args()

    threads: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in open(args.profile):
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        count = int(n)
        frames = stack.split(";")
        thread = "all"
        if frames and (frames[0].startswith("thread ") or frames[0].startswith("process ")):
            while frames and (frames[0].startswith("thread ") or frames[0].startswith("process ")):
                if frames[0].startswith("thread "):
                    thread = frames[0]
                frames = frames[1:]
        threads[thread] += count
        if args.thread and args.thread not in thread:
            continue
        total += count
        if not frames:
            continue
        names = [short(f) for f in frames]
        self_[names[-1]] += count
        for name in set(names):
            incl[name] += count

    all_samples = sum(threads.values())
    print(f"{all_samples} samples in all.\n")
    print("| thread | share |\n|---|---:|")
    for t, n in threads.most_common():
        print(f"| {t} | {100 * n / all_samples:.1f}% |")
    print(f"\nTop {args.top} by own time (self), of {total} samples:\n")
    print("| self | function |\n|---:|---|")
    for name, n in self_.most_common(args.top):
        print(f"| {100 * n / total:.1f}% | `{name}` |")
    print(f"\nTop {args.top} by inclusive time (reactor/thread-pool scaffolding left out):\n")
    print("| inclusive | function |\n|---:|---|")
    shown = [(k, v) for k, v in incl.most_common() if not any(s in k for s in SCAFFOLD)]
    for name, n in shown[: args.top]:
        print(f"| {100 * n / total:.1f}% | `{name}` |")


if __name__ == "__main__":
    main()
