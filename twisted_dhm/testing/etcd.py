"""A real etcd server for tests: Debian's ``etcd`` on free loopback ports with a temporary data dir.

``.ci/run`` installs ``etcd-server``; a missing ``etcd`` binary is an error here, not a skip.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

from twisted_dhm.testing.process import ServerProcess, free_port


class EtcdProcess(ServerProcess):
    def __init__(self, data_dir: Path, name: str = "etcd0", host: str = "127.0.0.1",
                 tls: dict[str, Path] | None = None) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed: apt-get install etcd-server (the integration tests need it)")
        self.binary = binary
        self.data_dir = Path(data_dir)
        self.name = name
        self.host = host
        self.client_port = free_port(host)
        self.peer_port = free_port(host)
        self.tls = tls  # {"ca", "server_cert", "server_key"}: https with client certificates required
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{name}.log"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return []
        return ["--cert-file", str(self.tls["server_cert"]), "--key-file", str(self.tls["server_key"]),
                "--trusted-ca-file", str(self.tls["ca"]), "--client-cert-auth"]

    def _context(self):  # type: ignore[no-untyped-def]
        if not self.tls:
            return None
        import ssl

        context = ssl.create_default_context(cafile=str(self.tls["ca"]))
        context.load_cert_chain(str(self.tls["client_cert"]), str(self.tls["client_key"]))
        return context

    def args(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        return [self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"{self.name}={peer}", *self._tls_args()]

    def ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=1, context=self._context()) as r:
            return json.load(r).get("health") == "true"

    def start(self) -> EtcdProcess:
        self.start_and_wait()
        return self

    # -- the v3 JSON gateway, for tests to look and poke ---------------------------------------

    def post(self, path: str, body: dict, headers: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=5, context=self._context()) as r:
            return json.load(r)

    def keys(self, prefix: bytes) -> dict[bytes, dict]:
        """Every key under ``prefix`` with its value (JSON-decoded) and lease."""
        from twisted_dhm.membership.etcd import prefix_end

        answer = self.post("/v3/kv/range", {"key": base64.b64encode(prefix).decode(),
                                            "range_end": base64.b64encode(prefix_end(prefix)).decode()})
        return {base64.b64decode(kv["key"]): {"value": json.loads(base64.b64decode(kv["value"])),
                                               "lease": kv.get("lease")}
                for kv in answer.get("kvs", [])}
