"""Membership through a real etcd (Debian's etcd-server), with real dhashmap processes."""

import base64
import http.server
import threading
import time

import pytest

from twisted_dhm.testing.etcd import EtcdProcess
from twisted_dhm.testing.process import NodeProcess, free_port, wait_for

pytestmark = pytest.mark.integration

PREFIX = b"/dhashmap/dhashmap/members/"
TTL = 3




@pytest.fixture
def etcd(tmp_path):
    server = EtcdProcess(tmp_path / "etcd" / "data").start()
    yield server
    server.stop()


@pytest.fixture
def etcd_nodes(tmp_path):
    started: list[NodeProcess] = []

    def start(endpoints, names=("e1", "e2", "e3"), extra=(), wait=True, env=None):
        nodes = []
        for name in names:
            node = NodeProcess(tmp_path / name / "data", node_id=name, env=env)
            node.extra_args = ("--discovery", "etcd", "--etcd-endpoints", endpoints, "--etcd-ttl", str(TTL),
                               "--health-interval", "0.3", "--request-timeout", "1", *extra)
            started.append(node)
            nodes.append(node.start(wait=wait))
        return nodes

    yield start
    for node in started:
        node.kill()


def test_three_nodes_find_each_other_and_a_killed_one_is_dead_within_the_ttl(etcd, etcd_nodes):
    nodes = etcd_nodes(etcd.endpoint)
    everyone = {"e1": "alive", "e2": "alive", "e3": "alive"}
    assert wait_for(lambda: all(n.member_states() == everyone for n in nodes)), [n.member_states() for n in nodes]
    records = etcd.keys(PREFIX)
    assert set(records) == {PREFIX + n.encode() for n in everyone}
    mine = records[PREFIX + b"e2"]
    assert mine["lease"] and mine["value"]["addresses"] == {"host": "127.0.0.1", "peer": nodes[1].peer_port,
                                                            "rest": nodes[1].port}
    assert nodes[0].request("PUT", "/v1/kv/k", b"v")[0] == 201

    nodes[2].kill()
    killed = time.monotonic()
    # The health checks see it first (3 missed pings 0.3 s apart); the lease expires after the
    # TTL (plus etcd's expiry check), and then the record is gone for good.
    assert wait_for(lambda: all(n.member_states().get("e3") == "dead" for n in nodes[:2]), deadline=TTL + 10)
    assert wait_for(lambda: PREFIX + b"e3" not in etcd.keys(PREFIX), deadline=TTL + 5)
    assert time.monotonic() - killed <= TTL + 5
    assert all(n.member_states().get("e3") == "dead" for n in nodes[:2])
    assert nodes[0].request("PUT", "/v1/kv/k2", b"v2")[0] == 201  # quorum of three still there

    nodes[2].start()
    assert wait_for(lambda: all(n.member_states().get("e3") == "alive" for n in nodes[:2]), deadline=15)


def test_a_clean_stop_revokes_the_lease_at_once(etcd, etcd_nodes):
    nodes = etcd_nodes(etcd.endpoint, names=("e1", "e2"))
    assert wait_for(lambda: nodes[0].member_states().get("e2") == "alive")
    nodes[1].stop()
    assert PREFIX + b"e2" not in etcd.keys(PREFIX)
    assert wait_for(lambda: nodes[0].member_states().get("e2") == "dead", deadline=2)


def test_etcd_down_and_back_keeps_serving_and_registers_again(etcd, etcd_nodes):
    nodes = etcd_nodes(etcd.endpoint, names=("e1", "e2"))
    assert wait_for(lambda: nodes[0].member_states() == {"e1": "alive", "e2": "alive"})
    etcd.stop()
    assert wait_for(lambda: nodes[0].readiness()["status"] == "degraded", deadline=TTL + 5)
    assert "etcd" in nodes[0].readiness()["problems"][0]
    # The last known view stays, and so does the store.
    assert nodes[0].member_states() == {"e1": "alive", "e2": "alive"}
    assert nodes[0].request("PUT", "/v1/kv/during", b"outage")[0] == 201
    assert nodes[1].request("GET", "/v1/kv/during")[2] == b"outage"

    etcd.start()
    assert wait_for(lambda: all(n.readiness()["status"] == "ready" for n in nodes), deadline=20)
    assert wait_for(lambda: set(etcd.keys(PREFIX)) == {PREFIX + b"e1", PREFIX + b"e2"}, deadline=10)

    # A lease that is gone (here: revoked behind the node's back) is replaced by a new one.
    old = etcd.keys(PREFIX)[PREFIX + b"e1"]["lease"]
    etcd.post("/v3/lease/revoke", {"ID": old})
    assert wait_for(lambda: etcd.keys(PREFIX).get(PREFIX + b"e1", {}).get("lease") not in (None, old), deadline=10)
    assert wait_for(lambda: nodes[1].member_states().get("e1") == "alive", deadline=10)


def test_failover_to_a_second_endpoint_and_garbage_from_a_fake_one(etcd, etcd_nodes):
    garbage = _GarbageServer()
    try:
        # The first endpoint answers nonsense: the node says so, stays up, and uses the real one.
        nodes = etcd_nodes(f"127.0.0.1:{garbage.port},{etcd.endpoint}", names=("e1",), wait=False)
        node = nodes[0]
        node.wait_ready()
        assert wait_for(lambda: PREFIX + b"e1" in etcd.keys(PREFIX), deadline=15), node.log()
        assert garbage.hits > 0
        assert "not JSON" in node.log() or "etcd" in node.log()
        assert node.proc.poll() is None
    finally:
        garbage.close()


def test_only_garbage_leaves_the_node_up_and_degraded(etcd_nodes):
    garbage = _GarbageServer()
    try:
        node = etcd_nodes(f"127.0.0.1:{garbage.port}", names=("e1",))[0]
        # Degraded first says "not yet in touch"; the garbage answer's reason follows.
        def says_why() -> bool:
            readiness = node.readiness()
            return readiness["status"] == "degraded" and any("not JSON" in p for p in readiness["problems"])

        assert wait_for(says_why, deadline=10), node.readiness()
        assert node.request("PUT", "/v1/kv/alone", b"ok")[0] == 201
        assert "Traceback" not in node.log()
    finally:
        garbage.close()


def test_username_and_password(etcd, etcd_nodes):
    etcd.post("/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    etcd.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
    etcd.post("/v3/auth/enable", {})
    # The password comes from the environment, as an operator would pass it.
    etcd_nodes(etcd.endpoint, names=("e1",), extra=("--etcd-username", "root"), env={"ETCD_PASSWORD": "rootpw"})
    token = etcd.post("/v3/auth/authenticate", {"name": "root", "password": "rootpw"})["token"]
    assert wait_for(lambda: b"/dhashmap/dhashmap/members/e1" in _keys_with_token(etcd, token), deadline=10)

    bad = etcd_nodes(etcd.endpoint, names=("e2",), extra=("--etcd-username", "root", "--etcd-password", "nope"))[0]
    assert wait_for(lambda: "authentication failed" in " ".join(bad.readiness().get("problems", [])), deadline=10), \
        bad.readiness()


def _keys_with_token(etcd, token):
    from twisted_dhm.membership.etcd import prefix_end

    answer = etcd.post("/v3/kv/range", {"key": base64.b64encode(PREFIX).decode(),
                                        "range_end": base64.b64encode(prefix_end(PREFIX)).decode()},
                       headers={"authorization": token})
    return {base64.b64decode(kv["key"]) for kv in answer.get("kvs", [])}


class _GarbageServer:
    """An HTTP server that answers every POST with 200 and bytes that are not JSON."""

    def __init__(self):
        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                outer.hits += 1
                self.rfile.read(int(self.headers.get("content-length", 0)))
                body = b"\x00<html>this is not etcd</html>"
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path, etcd_nodes):
    pki = _make_pki(tmp_path / "pki")
    server = EtcdProcess(tmp_path / "etcd-tls" / "data", tls=pki).start()
    try:
        node = etcd_nodes(f"https://127.0.0.1:{server.client_port}", names=("e1",),
                          extra=("--etcd-ca-file", str(pki["ca"]), "--etcd-cert-file", str(pki["client_cert"]),
                                 "--etcd-key-file", str(pki["client_key"])))[0]
        assert wait_for(lambda: PREFIX + b"e1" in server.keys(PREFIX), deadline=10), node.log()
        assert node.readiness()["status"] == "ready"
    finally:
        server.stop()


def _make_pki(directory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test ca")).issuer_name(name("test ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # etcd's gateway dials etcd's own gRPC port with the server certificate, so under
    # --client-cert-auth that certificate must be good for client authentication too.
    for who, usage in (("server", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       ("client", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(who)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage(usage), critical=False))
        if who == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{who}_cert"] = directory / f"{who}.pem"
        paths[f"{who}_key"] = directory / f"{who}-key.pem"
        paths[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{who}_key"].write_bytes(pem_key(key))
    return paths
