"""The admin shell: its configuration, its namespace, and the shell protocol driven in memory."""

import re

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.api.introspect import transfers_of
from twisted_dhm.api.manhole import AuthorizedKeysFile, admin_namespace, telnet_factory
from twisted_dhm.config import ConfigError, ManholeSpec, load_config
from twisted_dhm.ring import partition_of
from twisted_dhm.testing.simulation import SimCluster

ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


def shell(namespace):
    """A telnet manhole session on a StringTransport: send a line, get the screen text it produced."""
    protocol = telnet_factory(namespace).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)

    def send(line: bytes) -> str:
        transport.clear()
        protocol.dataReceived(line + b"\r\n")
        return ANSI.sub(b"", transport.value()).decode()

    return send


class ManholeConfigTests(SynchronousTestCase):
    def test_off_by_default(self):
        config = load_config({"node_id": "n1"}, {})
        self.assertIsNone(config.manhole)
        cluster = SimCluster(1)
        self.assertNotIn("manhole", [s.name for s in cluster.nodes["node1"]])

    def test_ssh_and_telnet_specs(self):
        config = load_config({"manhole": "ssh:2222", "manhole_keys": "/k"}, {})
        self.assertEqual(config.manhole, ManholeSpec("ssh", 2222, "127.0.0.1"))
        config = load_config({}, {"MANHOLE": "ssh:2222:interface=0.0.0.0", "MANHOLE_KEYS": "/k"})
        self.assertEqual(config.manhole, ManholeSpec("ssh", 2222, "0.0.0.0"))
        config = load_config({"manhole": "telnet:2223:interface=::1"}, {})
        self.assertEqual(config.manhole, ManholeSpec("telnet", 2223, "::1"))

    def test_telnet_only_on_loopback(self):
        with self.assertRaises(ConfigError) as e:
            load_config({"manhole": "telnet:2223:interface=0.0.0.0"}, {})
        self.assertIn("--manhole", str(e.exception))
        self.assertIn("loopback only", str(e.exception))

    def test_ssh_needs_keys(self):
        with self.assertRaises(ConfigError) as e:
            load_config({"manhole": "ssh:2222"}, {})
        self.assertIn("--manhole-keys", str(e.exception))

    def test_bad_specs(self):
        for bad in ("http:80", "ssh", "ssh:notaport", "ssh:2222:iface=127.0.0.1", "ssh:1:interface=a:b:c"):
            with self.assertRaises(ConfigError, msg=bad):
                load_config({"manhole": bad, "manhole_keys": "/k"}, {})


class ManholeServiceTests(SynchronousTestCase):
    def test_telnet_manhole_is_a_child_that_listens(self):
        cluster = SimCluster(1, manhole="telnet:2223")
        node = cluster.nodes["node1"]
        manhole = node.getServiceNamed("manhole")
        self.assertTrue(manhole.running)
        self.assertIsNotNone(manhole.listening)
        manhole.stopService()
        self.assertIsNone(manhole.listening)


class ShellTests(SynchronousTestCase):
    def setUp(self):
        self.cluster = SimCluster(3, partitions=64, replicas=2)
        self.cluster.run(5)
        self.node = self.cluster.nodes["node1"]
        self.send = shell(admin_namespace(self.node))

    def test_where_a_key_lives(self):
        out = self.send(b'where(b"key")')
        partition = partition_of(b"key", 64)
        owners = list(self.node.routing.table.preference_list(partition))
        self.assertEqual(len(owners), 2)
        self.assertIn(f"'partition': {partition}", out)
        self.assertIn(f"'owners': {owners!r}", out)
        # A str key is the same key as its UTF-8 bytes.
        self.assertIn(f"'owners': {owners!r}", self.send(b'where("key")'))

    def test_a_bad_argument_is_a_traceback_not_a_dead_shell(self):
        self.assertIn("TypeError: a key is bytes or str, not int", self.send(b"where(42)"))
        self.assertIn("'partition'", self.send(b'where(b"still here")'))

    def test_members_ring_stats_hints_transfers(self):
        members = self.send(b"[m['id'] for m in members()]")
        self.assertIn("['node1', 'node2', 'node3']", members)
        self.assertIn("'partitions': 64, 'replicas': 2", self.send(b"ring()"))
        self.cluster.result(self.node.coordinator.put(b"k", b"v", None))
        stats = self.send(b"stats()")
        self.assertIn("'node': 'node1'", stats)
        self.assertIn("'hints_queued': 0", stats)
        self.assertIn("'by_target': {}", self.send(b"hints()"))
        self.assertIn("[]", self.send(b"transfers()"))
        self.assertIn("True", self.send(b"store is node.engine and partition_table is routing.table"))



class HintsTests(SynchronousTestCase):
    def test_hints_by_target(self):
        cluster = SimCluster(4, partitions=64, replicas=3)
        cluster.run(5)
        cluster.crash("node4")
        cluster.run(10)  # node4 found dead: fallbacks take its writes, with hints
        for i in range(20):
            cluster.result(cluster.nodes["node1"].coordinator.put(b"key%d" % i, b"v"))
        held = 0
        for node in cluster.nodes.values():
            hints = admin_namespace(node)["hints"]()
            self.assertEqual(sum(hints["by_target"].values()), hints["queued"])
            self.assertEqual(set(hints["by_target"]) - {"node4"}, set())
            held += hints["by_target"].get("node4", 0)
        self.assertGreater(held, 0)


class TransfersTests(SynchronousTestCase):
    def test_no_rebalancer_no_transfers(self):
        self.assertEqual(transfers_of(object()), [])

    def test_a_rebalancer_on_the_node_is_used(self):
        class Rebalancer:
            def transfers(self):
                return iter([{"partition": 3, "to": "node2"}])

        class WithStatus:
            transfers = {("pull", 1, "n2"): "internal"}

            def status(self):
                return {"partitions_owned": 9, "transfers": [{"kind": "pull", "partition": 1}]}

        class WithDict:
            transfers = {("pull", 1, "n2"): "t1"}

        def node(**parts):
            return type("Node", (), parts)()

        self.assertEqual(transfers_of(node(rebalance=Rebalancer())), [{"partition": 3, "to": "node2"}])
        self.assertEqual(transfers_of(node(rebalance=WithStatus())), [{"kind": "pull", "partition": 1}])
        self.assertEqual(transfers_of(node(rebalancer=WithDict())), ["t1"])
        self.assertEqual(transfers_of(node(transfers=["a"])), ["a"])


class AuthorizedKeysTests(SynchronousTestCase):
    def test_only_listed_keys_log_in(self):
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from twisted.conch.checkers import SSHPublicKeyChecker
        from twisted.conch.error import ValidPublicKey
        from twisted.conch.ssh import keys
        from twisted.cred.credentials import SSHPrivateKey
        from twisted.cred.error import UnauthorizedLogin

        allowed = keys.Key(ed25519.Ed25519PrivateKey.generate())
        other = keys.Key(ed25519.Ed25519PrivateKey.generate())
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"# operators\nnot a key line\n" + allowed.public().toString("openssh") + b" ops@example\n")
        checker = SSHPublicKeyChecker(AuthorizedKeysFile(path))

        def login(key, signed=True):
            data = b"session data"
            credentials = SSHPrivateKey(b"anyone", b"ssh-ed25519", key.public().blob(), data,
                                        key.sign(data) if signed else None)
            return checker.requestAvatarId(credentials)

        self.assertEqual(self.successResultOf(login(allowed)), b"anyone")
        self.failureResultOf(login(allowed, signed=False), ValidPublicKey)
        self.failureResultOf(login(other), UnauthorizedLogin)

    def test_unreadable_file_refuses_everyone(self):
        self.assertEqual(AuthorizedKeysFile(self.mktemp()).getAuthorizedKeys(b"root"), [])


class FakeChannel:
    """What an SSH session channel offers the terminal: a process protocol's side of it."""

    session = None
    lost = False
    written = b""

    def makeConnection(self, transport):  # noqa: N802
        self.transport = transport

    def write(self, data):
        self.written += data

    def loseConnection(self):  # noqa: N802
        self.lost = True


class SSHSessionTests(SynchronousTestCase):
    """The SSH side in memory: the factory's host key, and a session that ends on EOF and follows resizes."""

    def setUp(self):
        from cryptography.hazmat.primitives.asymmetric import ed25519
        from twisted.conch.ssh import keys

        from twisted_dhm.api.manhole import ssh_factory

        self.host_key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        self.factory = ssh_factory({"answer": 42}, self.mktemp(), self.host_key)

    def test_host_key_is_this_factorys_own(self):
        from twisted.conch.manhole_ssh import ConchFactory

        self.assertEqual(self.factory.publicKeys, {b"ssh-ed25519": self.host_key.public()})
        self.assertEqual(ConchFactory.publicKeys, {}, "the class's shared dict is left alone")

    def test_session_eof_and_resize(self):
        from twisted.conch.interfaces import IConchUser, ISession

        _, user, _ = self.factory.portal.realm.requestAvatar(b"admin", None, IConchUser)
        session = ISession(user.original)

        channel = FakeChannel()
        session.getPty(b"xterm", (24, 80, 0, 0), [])
        session.openShell(channel)
        session.windowChanged((40, 132, 0, 0))
        self.assertEqual((session.width, session.height), (132, 40))
        self.assertFalse(channel.lost)
        self.assertIn(b">>> ", channel.written)  # the prompt
        session.eofReceived()
        self.assertTrue(channel.lost)

    def test_no_pty_gets_a_default_terminal(self):
        from twisted.conch.interfaces import IConchUser, ISession

        _, user, _ = self.factory.portal.realm.requestAvatar(b"admin", None, IConchUser)
        session = ISession(user.original)
        channel = FakeChannel()
        session.openShell(channel)  # ssh -T: no pty request came first
        self.assertEqual((session.width, session.height), (80, 24))
