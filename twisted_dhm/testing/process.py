"""Real dhashmap nodes as child processes, for integration tests.

A ``NodeProcess`` runs ``twistd -n dhashmap`` on a loopback address with a port
the OS chose free, waits until ``/ready`` answers, and can stop it gracefully
or with SIGKILL.  Waiting polls in short steps up to a deadline; nothing sleeps
a fixed time.
"""

from __future__ import annotations

import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STARTUP_DEADLINE = 30.0


def wait_for(predicate: Any, deadline: float = 30.0, step: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true (True) or ``deadline`` seconds pass (False)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


class ServerProcess:
    """A server started in its own session for a test: started, waited for, stopped, logged.

    Subclasses give ``args()``, ``name`` and ``ready()`` (True once it serves).
    """

    name = "server"
    proc: subprocess.Popen | None = None
    log_path: Path

    def args(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start_and_wait(self, deadline: float = 30.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()}")
            try:
                if self.ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {deadline:g}s: {self.log()}")

    def stop(self) -> None:
        """SIGTERM to its process group; SIGKILL if it has not exited in 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


_handed_out: set[int] = set()
_PORT_CHOICE = random.Random(os.urandom(16))  # test ports only: nothing a node decides


def _ephemeral_low() -> int:
    """The first port the kernel gives outgoing connections (and ``bind(0)``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    """Free for a TCP listener and for UDP (gossip listens on both with one port number)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, that this process has not handed out before, and that no
    outgoing connection will take before the server binds it.

    Ports come from below the kernel's ephemeral range.  A port from ``bind(0)`` is an ephemeral
    one, which any process's next outgoing connection may be given between our check and the
    server's own bind: seen as a Consul agent failing with "address already in use" under a busy
    suite.  Drawn at random (from ``os.urandom``: two suites on one machine pick apart) and
    remembered, so two ports chosen for one node never collide.
    """
    low = _ephemeral_low()
    pool = range(10000, low) if low - 10000 >= 1000 else None
    for _ in range(200):
        if pool is None:  # no room below the ephemeral range: the kernel's choice, as before
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        else:
            port = _PORT_CHOICE.choice(pool)
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh free port after 200 tries")


def twistd_command() -> list[str]:
    """twistd of the running interpreter's environment."""
    return [str(Path(sys.executable).with_name("twistd"))]


class NodeProcess:
    def __init__(
        self,
        data_dir: Path,
        node_id: str = "node1",
        host: str = "127.0.0.1",
        port: int | None = None,
        peer_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.node_id = node_id
        self.host = host
        self.port = port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.grpc_port = free_port(host)
        self.extra_args = extra_args
        self.env = env
        self.command = command
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"{node_id}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def args(self) -> list[str]:
        if self.command is not None:
            return self.command
        return [
            *twistd_command(), "--nodaemon", "--pidfile=", "dhashmap",
            "--node-id", self.node_id, "--bind", self.host, "--port", str(self.port),
            "--peer-port", str(self.peer_port), "--grpc-port", str(self.grpc_port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]

    def start(self, wait: bool = True) -> NodeProcess:
        env = dict(os.environ)
        from twisted_dhm.config import SETTINGS

        for name in [s.env for s in SETTINGS] + ["CONFIG_FILE"]:
            env.pop(name, None)
        env.update(self.env or {})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, deadline: float = STARTUP_DEADLINE) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _, _ = self.request("GET", "/ready", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node not ready after {deadline}s:\n{self.log()}")

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def members(self) -> dict[str, dict]:
        """``/v1/cluster/members`` by member id; empty while the node does not answer."""
        import json

        try:
            status, _, body = self.request("GET", "/v1/cluster/members", timeout=2)
        except OSError:
            return {}
        return {m["id"]: m for m in json.loads(body)["members"]} if status == 200 else {}

    def member_states(self) -> dict[str, str]:
        return {member_id: m["state"] for member_id, m in self.members().items()}

    def readiness(self) -> dict:
        """The JSON of ``/ready`` (``status``: ready, degraded or not_ready; ``problems``)."""
        import json

        return json.loads(self.request("GET", "/ready")[2])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
