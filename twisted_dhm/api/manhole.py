"""The admin shell: a Python prompt inside the running node (``--manhole``; docs/admin.md).

Over SSH, a login needs a key listed in the ``--manhole-keys`` authorized_keys file
(any user name; the file is read at each login, so keys change without a restart).
Over telnet there is no authentication at all, which is why the configuration only
lets telnet listen on loopback.

``twisted.conch`` is imported inside the functions that build the listener, never at
module import: ``twisted.conch.ssh`` installs the default reactor when it is imported,
and a node must stay constructible with an injected clock and network (the simulator)
and the plugin import-light.  The helpers in the namespace only read the node.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ServerFactory

from twisted_dhm import logs
from twisted_dhm.api.introspect import hints_summary, transfers_of
from twisted_dhm.config import ManholeSpec
from twisted_dhm.network import INetwork

log = logs.logger("dhashmap.manhole")

HOST_KEY_FILE = "manhole_host_key"
#: Most hints ``hints()`` counts per node.
HINT_COUNT_LIMIT = 100_000


def _as_key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"a key is bytes or str, not {type(key).__name__}")


def admin_namespace(node: Any) -> dict[str, Any]:
    """What the shell starts with: the node's parts and helpers that summarise them.

    The helpers read the node when called (the partition table is rebuilt when
    membership changes), so they always show the current state.
    """

    def members() -> list[dict[str, Any]]:
        """Every member this node knows: id, state, incarnation and addresses."""
        return [m.to_json() for m in node.view.members()]

    def ring() -> dict[str, Any]:
        """The partition table in brief: Q, N, and how many partitions each node holds."""
        table = node.routing.table
        held = {n: 0 for n in sorted(table.nodes)}
        for owners in table.as_dict().values():
            for owner in owners:
                held[owner] += 1
        return {"partitions": table.partitions, "replicas": table.replicas, "partitions_held": held}

    def where(key: bytes | str) -> dict[str, Any]:
        """A key's partition, its preference list (owner ids) and which of those are up now."""
        raw = _as_key(key)
        table = node.routing.table
        partition = table.partition(raw)
        owners = list(table.preference_list(partition))
        return {"key": raw, "partition": partition, "owners": owners,
                "up": [o for o in owners if node.view.is_routable(o)]}

    def hints() -> dict[str, Any]:
        """Hinted writes held here, by the node each is for, and how many were handed over."""
        return hints_summary(node, HINT_COUNT_LIMIT)

    def transfers() -> list[Any]:
        """Partition transfers in flight (rebalancing); empty when this node has no rebalancer."""
        return transfers_of(node)

    def stats() -> dict[str, Any]:
        """Storage, requests by operation and code, hints, read repairs, reclaimed tombstones."""
        storage = node.engine.stats()
        requests: dict[str, float] = {}
        for metric in node.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    requests[f"{sample.labels['op']} {sample.labels['code']}"] = sample.value
        return {
            "node": node.config.node_id,
            "storage": {"keys": storage.keys, "bytes": storage.bytes},
            "requests": requests,
            "hints_queued": node.handoff.queued(),
            "hints_delivered": node.handoff.delivered,
            "read_repairs": node.coordinator.read_repairs,
            "tombstones_reclaimed": node.reaper.reclaimed,
        }

    return {
        "node": node, "config": node.config, "store": node.engine, "hint_store": node.hints,
        "membership": node.membership, "view": node.view, "routing": node.routing,
        "partition_table": node.routing.table, "coordinator": node.coordinator,
        "members": members, "ring": ring, "where": where, "hints": hints,
        "transfers": transfers, "stats": stats,
    }


def telnet_factory(namespace: dict[str, Any]) -> Factory:
    """Telnet to the shell, no authentication (the configuration keeps it on loopback)."""
    from twisted.conch.insults import insults
    from twisted.conch.manhole import ColoredManhole
    from twisted.conch.telnet import TelnetBootstrapProtocol, TelnetTransport

    factory = ServerFactory()
    factory.protocol = lambda: TelnetTransport(  # type: ignore[assignment]
        TelnetBootstrapProtocol, insults.ServerProtocol, ColoredManhole, namespace)
    return factory


def load_or_create_host_key(path: str | None) -> Any:
    """The SSH host key: kept in ``path`` (made once, mode 0600), or a new one per start without a path."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from twisted.conch.ssh import keys

    if path is not None and os.path.exists(path):
        with open(path, "rb") as f:
            return keys.Key.fromString(f.read())
    key = keys.Key(ed25519.Ed25519PrivateKey.generate())
    if path is not None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
    return key


class AuthorizedKeysFile:
    """``IAuthorizedKeysDB`` over one authorized_keys file, for every user name, read at each login."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> list[Any]:  # noqa: N802 (Twisted's interface)
        from twisted.conch.checkers import readAuthorizedKeyFile

        try:
            with open(self.path, "rb") as f:
                return list(readAuthorizedKeyFile(f))
        except OSError as e:
            log.warn("manhole: cannot read {path}: {e}; refusing the login", path=self.path, e=e.strerror)
            return []


def ssh_factory(namespace: dict[str, Any], keys_file: str, host_key: Any) -> Factory:
    from twisted.conch import manhole_ssh
    from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
    from twisted.conch.insults import insults
    from twisted.conch.interfaces import IConchUser
    from twisted.conch.manhole import ColoredManhole
    from twisted.cred.portal import Portal
    from zope.interface import directlyProvides

    db = AuthorizedKeysFile(keys_file)
    directlyProvides(db, IAuthorizedKeysDB)
    class AdminSession(manhole_ssh.TerminalSession):
        """Twisted's terminal session, minus its ``NotImplementedError``s: a client that closes
        its input (``ssh host < script``) ends the session, and a resized window is passed on."""

        width, height = 80, 24  # a client that asked for no terminal (ssh -T)
        _channel: Any = None
        _terminal: Any = None

        def openShell(self, proto: Any) -> None:  # noqa: N802 (Twisted's interface)
            self._channel = proto
            self._terminal = self.transportFactory(proto, self.chainedProtocolFactory(),
                                                   IConchUser(self.original), self.width, self.height)

        def eofReceived(self) -> None:  # noqa: N802
            if self._channel is not None:
                self._channel.loseConnection()

        def windowChanged(self, size: Any) -> None:  # noqa: N802
            self.height, self.width = size[:2]
            if self._terminal is not None:
                self._terminal.chainedProtocol.terminalProtocol.terminalSize(self.width, self.height)

    realm = manhole_ssh.TerminalRealm()
    realm.sessionFactory = AdminSession
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(ColoredManhole, namespace)
    factory = manhole_ssh.ConchFactory(Portal(realm, [SSHPublicKeyChecker(db)]))
    # Instance dicts: ConchFactory's are class attributes, shared by every instance.
    factory.publicKeys = {host_key.sshType(): host_key.public()}
    factory.privateKeys = {host_key.sshType(): host_key}
    return factory


class ManholeService(Service):
    """Listens for the admin shell on the injected network while running."""

    name = "manhole"

    def __init__(self, spec: ManholeSpec, keys_file: str, namespace: Callable[[], dict[str, Any]],
                 network: INetwork, host_key_path: str | None = None) -> None:
        self.spec = spec
        self.keys_file = keys_file
        self.namespace = namespace
        self.network = network
        self.host_key_path = host_key_path
        self.factory: Factory | None = None
        self.listening: IListeningPort | None = None

    def build_factory(self) -> Factory:
        namespace = self.namespace()
        if self.spec.kind == "telnet":
            return telnet_factory(namespace)
        if not os.access(self.keys_file, os.R_OK):
            raise SystemExit(f"dhashmap: cannot start: --manhole-keys {self.keys_file} cannot be read")
        try:
            host_key = load_or_create_host_key(self.host_key_path)
        except (OSError, ValueError) as e:
            raise SystemExit(f"dhashmap: cannot start: manhole host key {self.host_key_path}: {e}") from None
        return ssh_factory(namespace, self.keys_file, host_key)

    def startService(self) -> None:
        self.factory = self.build_factory()
        try:
            self.listening = self.network.listen(self.spec.interface, self.spec.port, self.factory)
        except CannotListenError as e:
            raise SystemExit(f"dhashmap: cannot start: cannot listen on {self.spec} (manhole): "
                             f"{e.socketError}") from None
        log.info("admin shell (manhole) on {spec}", spec=str(self.spec))
        super().startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.listening is not None:
            port, self.listening = self.listening, None
            return port.stopListening()
        return None
