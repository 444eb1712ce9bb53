"""A real Consul agent for tests: ``consul agent -dev`` on free loopback ports.

The binary comes from ``tools/get-consul.sh`` (built once from the Go module proxy and cached;
see tools/consul/README.md), or from ``$DHASHMAP_CONSUL``.  Failing to get it is an error,
not a skip: CI must run these tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

from twisted_dhm.testing.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]


def consul_binary() -> str:
    explicit = os.environ.get("DHASHMAP_CONSUL")
    if explicit:
        return explicit
    script = ROOT / "tools" / "get-consul.sh"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"no Consul agent for the tests: tools/get-consul.sh failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


class ConsulAgentProcess(ServerProcess):
    def __init__(self, log_dir: Path, token: str | None = None, host: str = "127.0.0.1") -> None:
        self.binary = consul_binary()
        self.log_path = Path(log_dir) / "consul.log"
        self.host = host
        self.token = token  # with a token: ACLs on, default deny, this token as the management token
        self.http_port = free_port(host)
        self.serf_port = free_port(host)
        self.server_port = free_port(host)
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.http_port}"

    name = "consul"

    def args(self) -> list[str]:
        hcl = ["disable_update_check = true"]
        if self.token:
            hcl.append(f'acl {{ enabled = true\n default_policy = "deny"\n'
                       f' tokens {{ initial_management = "{self.token}" }} }}')
        args = [self.binary, "agent", "-dev", "-node", "dhm-test", "-bind", self.host, "-client", self.host,
                "-http-port", str(self.http_port), "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
                "-serf-lan-port", str(self.serf_port), "-serf-wan-port", "-1", "-server-port", str(self.server_port),
                "-log-level", "warn"]
        for block in hcl:
            args += ["-hcl", block]
        return args

    def ready(self) -> bool:
        return bool(self.get("/v1/status/leader"))

    def start(self) -> ConsulAgentProcess:
        self.start_and_wait()
        return self

    def get(self, path: str):  # type: ignore[no-untyped-def]
        headers = {"x-consul-token": self.token} if self.token else {}
        request = urllib.request.Request(f"http://{self.address}{path}", headers=headers)
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)

    def passing(self, service: str = "dhashmap") -> set[str]:
        """Node ids of the passing instances of ``service``."""
        return {e["Service"]["Meta"].get("node_id") for e in self.get(f"/v1/health/service/{service}?passing")}
