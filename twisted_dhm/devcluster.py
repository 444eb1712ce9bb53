"""``python -m twisted_dhm.devcluster``: a local cluster in the foreground (what ``make run`` starts).

Starts ``--nodes`` (3) real nodes on 127.0.0.1 with consecutive ports, data under
``./data/<node-id>``, each listing all of them as seeds (``--discovery static``) or
joining through the first one's gossip port (``--discovery swim``); prefixes their logs
with the node name; prints each REST URL once the cluster is up; and stops
them all on Ctrl-C or SIGTERM (or when one of them dies).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path


def _pump(name: str, stream, lock: threading.Lock) -> None:  # type: ignore[no-untyped-def]
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        with lock:
            print(f"[{name}] {line}", flush=True)


def _members_alive(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/v1/cluster/members", timeout=1) as response:
            members = json.load(response)["members"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for m in members if m["state"] == "alive")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="REST port of the first node")
    parser.add_argument("--peer-port", type=int, default=7000, help="native port of the first node")
    parser.add_argument("--data-dir", default="./data")
    parser.add_argument("--storage", default="lmdb", choices=("lmdb", "memory"))
    parser.add_argument("--discovery", default="static", choices=("static", "swim"))
    parser.add_argument("--gossip-port", type=int, default=7946, help="gossip port of the first node (swim)")
    parser.add_argument("--grpc-port", type=int, default=9090, help="gRPC port of the first node")
    parser.add_argument("--manhole-port", type=int, default=0,
                        help="admin shell port of the first node on 127.0.0.1 (0: none; docs/admin.md)")
    parser.add_argument("--manhole-keys", default="",
                        help="authorized_keys file: the manhole speaks SSH (without it: telnet, loopback only)")
    args = parser.parse_args(argv)

    twistd = str(Path(sys.executable).with_name("twistd"))
    names = [f"node{i + 1}" for i in range(args.nodes)]
    if args.discovery == "swim":
        seeds = f"{args.host}:{args.gossip_port}"  # everyone joins through node1
    else:
        seeds = ",".join(f"{args.host}:{args.peer_port + i}" for i in range(args.nodes))
    lock = threading.Lock()
    children: list[subprocess.Popen] = []
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for i, name in enumerate(names):
        command = [
            twistd, "--nodaemon", "--pidfile=", "dhashmap", "--node-id", name, "--bind", args.host,
            "--port", str(args.port + i), "--peer-port", str(args.peer_port + i), "--seed-nodes", seeds,
            "--data-dir", str(Path(args.data_dir) / name), "--storage", args.storage,
            "--discovery", args.discovery, "--gossip-port", str(args.gossip_port + i),
            "--grpc-port", str(args.grpc_port + i),
        ]
        if args.manhole_port:
            kind = "ssh" if args.manhole_keys else "telnet"
            command += ["--manhole", f"{kind}:{args.manhole_port + i}:interface=127.0.0.1"]
            if args.manhole_keys:
                command += ["--manhole-keys", str(Path(args.manhole_keys).expanduser().resolve())]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        children.append(child)
        threading.Thread(target=_pump, args=(name, child.stdout, lock), daemon=True).start()

    urls = [f"http://{args.host}:{args.port + i}" for i in range(args.nodes)]
    announced = False
    deadline = time.monotonic() + 60
    status = 0
    while not stopping.is_set():
        dead = [name for name, child in zip(names, children, strict=True) if child.poll() is not None]
        if dead:
            with lock:
                print(f"devcluster: {', '.join(dead)} exited; stopping the others", flush=True)
            status = 1
            break
        if not announced:
            if all(_members_alive(url) == args.nodes for url in urls):
                with lock:
                    print("\ndevcluster: all nodes up. REST:", flush=True)
                    for name, url in zip(names, urls, strict=True):
                        print(f"  {name}  {url}", flush=True)
                    print("Ctrl-C stops them all.\n", flush=True)
                announced = True
            elif time.monotonic() > deadline:
                with lock:
                    print("devcluster: the cluster did not form within 60 s", flush=True)
                status = 1
                break
        stopping.wait(0.2)

    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    return status


if __name__ == "__main__":
    sys.exit(main())
