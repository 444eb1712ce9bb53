"""Configuration: flags > environment > YAML file > defaults, validated once.

Every setting is declared once in ``SETTINGS``; the twistd flags, the
environment variables, the YAML keys and ``docs/configuration.md`` all come
from that table, so they cannot drift apart.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import yaml

from twisted_dhm.membership.view import MAX_WEIGHT
from twisted_dhm.versions import NODE_ID


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and where it came from."""


Parser = Callable[[Any], Any]


def _int_range(lo: int, hi: int) -> Parser:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"must be an integer from {lo} to {hi}")  # (7.9 is not 7; nor .inf)
        try:
            value = int(raw)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"must be an integer from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}")
        return value

    return parse


_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1}
for _i, _u in enumerate("kmgt", start=1):
    _SIZE_UNITS[_u + "ib"] = 1024**_i
    _SIZE_UNITS[_u + "b"] = 1000**_i


def _size(lo: int, hi: int) -> Parser:
    def parse(raw: Any) -> int:
        match = _SIZE.match(str(raw))
        if not match:
            raise ValueError("must be a size such as 4096, 64KiB or 8MiB")
        unit = match.group(2).lower() if match.group(2) else None
        value = int(match.group(1)) * _SIZE_UNITS[unit]
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi} bytes")
        return value

    return parse


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(lo: float, hi: float) -> Parser:
    def parse(raw: Any) -> float:
        match = _DURATION.match(str(raw))
        if not match:
            raise ValueError("must be a duration such as 30, 30s, 500ms or 5m")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g}s and {hi:g}s")
        return value

    return parse


def _choice(*choices: str) -> Parser:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _node_id(raw: Any) -> str:
    value = str(raw)
    if not NODE_ID.match(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _host(raw: Any) -> str:
    value = str(raw).strip()
    if not value:
        raise ValueError("must be an IP address or host name")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$", value):
            raise ValueError("must be an IP address or host name") from None
    return value


def _seed_list(raw: Any) -> tuple[tuple[str, int], ...]:
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    seeds = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host:
            raise ValueError(f"each seed must be host:port, like 127.0.0.1:7000 (not {item!r})")
        host = host.strip("[]")
        seeds.append((_host(host), _int_range(1, 65535)(port)))
    return tuple(seeds)


def _key_list(raw: Any) -> tuple[bytes, ...]:
    """Base64 AES keys of 16, 24 or 32 bytes (a list, or a comma-separated string)."""
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    keys = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        try:
            key = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("each key must be base64, like the output of `openssl rand -base64 32`") from None
        if len(key) not in (16, 24, 32):
            raise ValueError(f"each key must be 16, 24 or 32 bytes (AES-128/192/256), not {len(key)}")
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _endpoint_list(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
    out = []
    for item in items:
        item = str(item).strip().rstrip("/")
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if not sep:
            scheme, rest = "http", item
        if scheme not in ("http", "https"):
            raise ValueError(f"each endpoint must be http(s)://host:port or host:port (not {item!r})")
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"each endpoint needs a port, like 127.0.0.1:2379 (not {item!r})")
        _host(host.strip("[]"))
        _int_range(1, 65535)(port)
        out.append(f"{scheme}://{rest}")
    if not out:
        raise ValueError("give at least one endpoint")
    return tuple(out)


def _etcd_prefix(raw: Any) -> str:
    value = str(raw)
    if not value.startswith("/") or not value.endswith("/") or "\0" in value:
        raise ValueError("must start and end with '/', like /dhashmap/prod/members/")
    return value


def _profile(knob: str) -> Callable[[Mapping[str, Any]], Any]:
    """A gossip setting's default: its number in the chosen --gossip-profile."""

    def default(values: Mapping[str, Any]) -> Any:
        from twisted_dhm.membership.swim.config import SwimConfig  # only when the default is needed

        return getattr(SwimConfig.profile(values["gossip_profile"]), knob)

    default.__doc__ = "per --gossip-profile"
    return default


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


_CLUSTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _cluster_name(raw: Any) -> str:
    value = str(raw)
    if not _CLUSTER.match(value):
        raise ValueError("must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


def _path(raw: Any) -> str:
    value = str(raw)
    if not value or "\0" in value:
        raise ValueError("must be a file system path")
    return value


_LOOPBACK_NAMES = ("localhost",)


@attrs.frozen
class ManholeSpec:
    """Where the admin shell listens: ``ssh`` (authorized keys) or ``telnet`` (loopback only)."""

    kind: str
    port: int
    interface: str = "127.0.0.1"

    def __str__(self) -> str:
        return f"{self.kind}:{self.port}:interface={self.interface}"


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _manhole(raw: Any) -> ManholeSpec | None:
    """``ssh:PORT[:interface=ADDR]`` or ``telnet:PORT[:interface=LOOPBACK]``; ``off`` or empty: none."""
    value = str(raw).strip()
    if value.lower() in ("", "off", "none"):
        return None
    usage = "must be ssh:PORT[:interface=ADDR] or telnet:PORT[:interface=127.0.0.1], like ssh:2222:interface=127.0.0.1"
    kind, _, rest = value.partition(":")
    port_text, sep, option = rest.partition(":")
    if kind not in ("ssh", "telnet") or not port_text:
        raise ValueError(usage)
    port = _int_range(0, 65535)(port_text)
    interface = "127.0.0.1"
    if sep:
        name, eq, addr = option.partition("=")
        if name != "interface" or not eq:
            raise ValueError(usage)
        interface = _host(addr.strip("[]"))
    if kind == "telnet" and not _is_loopback(interface):
        raise ValueError(
            f"telnet has no authentication and no encryption, so it listens on loopback only "
            f"(not {interface}); use ssh:PORT with --manhole-keys for anything else")
    return ManholeSpec(kind, port, interface)


@attrs.frozen
class Setting:
    name: str  # attribute of Config, YAML key
    env: str
    parse: Parser
    default: Any  # a value, or a callable taking the partly built settings dict
    help: str
    metavar: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _default_node_id() -> str:
    try:
        return _node_id(socket.gethostname().split(".")[0])
    except ValueError:
        return "node1"


def _default_data_dir(values: Mapping[str, Any]) -> str:
    return os.path.join(".", "data", values["node_id"])


def _default_advertise(values: Mapping[str, Any]) -> str:
    bind = values["bind"]
    return "127.0.0.1" if bind in ("0.0.0.0", "::") else bind


LMDB_MAX_KEY_SIZE = 446
"""LMDB's keys are at most 511 bytes; a hint is stored under its target's node id (up to 64
bytes), a NUL and the key: so a key is at most 446 bytes."""

SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", "NODE_ID", _node_id, lambda v: _default_node_id(),
            "Unique name of this node in the cluster (default: the short host name).", "NAME"),
    Setting("port", "PORT", _int_range(0, 65535), 8080, "REST API port.", "PORT"),
    Setting("bind", "BIND", _host, "0.0.0.0", "Address the listeners bind to.", "ADDR"),
    Setting("advertise", "ADVERTISE", _host, _default_advertise,
            "Address other nodes and clients use to reach this node "
            "(default: --bind, or 127.0.0.1 when binding to all interfaces).", "ADDR"),
    Setting("data_dir", "DATA_DIR", _path, _default_data_dir,
            "Directory for this node's data (default: ./data/<node-id>).", "DIR"),
    Setting("storage", "STORAGE", _choice("lmdb", "memory"), "lmdb",
            "Storage engine: lmdb (durable, on disk) or memory (lost on exit).", "ENGINE"),
    Setting("log_format", "LOG_FORMAT", _choice("text", "json"), "text",
            "Log format on standard output: text, or json (one object per line).", "FORMAT"),
    Setting("log_level", "LOG_LEVEL", _choice("debug", "info", "warn", "error", "critical"), "info",
            "Least severe level of the node's own log lines: debug, info, warn, error or critical.", "LEVEL"),
    Setting("access_log", "ACCESS_LOG", _bool, False,
            "Log every HTTP request (method, path, status, bytes, duration, request id) under dhashmap.access. "
            "Off by default: a log line costs more than a GET.", "BOOL"),
    Setting("discovery", "DISCOVERY_MODE", _choice("static", "swim", "etcd", "consul"), "static",
            "How members find each other: static (the --seed-nodes list, health checks over the native "
            "protocol), swim (gossip on --gossip-port; --seed-nodes are gossip addresses), etcd "
            "(--etcd-endpoints) or consul (the agent at --consul-addr).", "MODE"),
    Setting("cluster", "CLUSTER_NAME", _cluster_name, "dhashmap",
            "Cluster name; nodes of other clusters are refused at the handshake.", "NAME"),
    Setting("grpc_port", "GRPC_PORT", _int_range(0, 65535), 9090,
            "gRPC API port (KV and Cluster services, health, reflection); 0: no gRPC listener.", "PORT"),
    Setting("peer_port", "PEER_PORT", _int_range(0, 65535), 7000,
            "Native protocol port (replication between nodes, fast clients).", "PORT"),
    Setting("seed_nodes", "SEED_NODES", _seed_list, (),
            "Comma-separated host:port of other members (listing this node too is fine): their --peer-port "
            "with static discovery, their --gossip-port with swim.", "HOST:PORT,..."),
    Setting("gossip_port", "GOSSIP_PORT", _int_range(0, 65535), 7946,
            "SWIM gossip port, UDP and TCP (--discovery swim).", "PORT"),
    Setting("gossip_profile", "GOSSIP_PROFILE", _choice("lan", "wan", "local"), "lan",
            "SWIM timing defaults, as memberlist's: lan, wan or local. Each gossip setting below "
            "overrides its own number.", "PROFILE"),
    Setting("gossip_probe_interval", "GOSSIP_PROBE_INTERVAL", _duration(0.01, 600), _profile("probe_interval"),
            "How often a member probes another (default: from --gossip-profile; lan 1s).", "DURATION"),
    Setting("gossip_probe_timeout", "GOSSIP_PROBE_TIMEOUT", _duration(0.005, 600), _profile("probe_timeout"),
            "How long a direct probe waits for its ack before asking others (lan 500ms).", "DURATION"),
    Setting("gossip_indirect_checks", "GOSSIP_INDIRECT_CHECKS", _int_range(0, 16), _profile("indirect_checks"),
            "Members asked to probe a member that missed its direct probe (lan 3).", "K"),
    Setting("gossip_suspicion_mult", "GOSSIP_SUSPICION_MULT", _int_range(1, 100), _profile("suspicion_mult"),
            "Suspicion timeout multiplier: a suspect is declared dead after suspicion-mult x max(1, log10 N) "
            "x probe-interval at the least (lan 4).", "N"),
    Setting("gossip_retransmit_mult", "GOSSIP_RETRANSMIT_MULT", _int_range(1, 100), _profile("retransmit_mult"),
            "Each update is gossiped retransmit-mult x log10(N+1) times (lan 4).", "N"),
    Setting("gossip_interval", "GOSSIP_INTERVAL", _duration(0.005, 600), _profile("gossip_interval"),
            "How often queued updates are gossiped to --gossip-nodes random members (lan 200ms).", "DURATION"),
    Setting("gossip_nodes", "GOSSIP_NODES", _int_range(1, 64), _profile("gossip_nodes"),
            "Members each gossip round goes to (lan 3).", "N"),
    Setting("gossip_push_pull_interval", "GOSSIP_PUSH_PULL_INTERVAL", _duration(0.1, 86400),
            _profile("push_pull_interval"),
            "How often a member syncs its whole member list with a random other over TCP (lan 30s).",
            "DURATION"),
    Setting("gossip_mtu", "GOSSIP_MTU", _int_range(1024, 65000), 1400,
            "Largest gossip datagram, in bytes.", "BYTES"),
    Setting("gossip_lifeguard", "GOSSIP_LIFEGUARD", _bool, True,
            "Lifeguard: local health awareness, suspicion timeouts that shrink with confirmations, and "
            "the buddy system (false: classic SWIM).", "BOOL"),
    Setting("gossip_keys", "GOSSIP_KEYS", _key_list, (),
            "Encrypt and authenticate gossip with AES-GCM: comma-separated base64 keys of 16, 24 or 32 "
            "bytes, the first one primary. Every member needs a key in common. A key ring changed at run "
            "time (POST /v1/cluster/gossip/keys) is kept in <data-dir>/gossip-keyring and wins over this "
            "setting at the next start.", "KEY,..."),
    Setting("etcd_endpoints", "ETCD_ENDPOINTS", _endpoint_list, ("127.0.0.1:2379",),
            "etcd client URLs or host:port, comma-separated, tried in turn (--discovery etcd).", "URL,..."),
    Setting("etcd_prefix", "ETCD_PREFIX", _etcd_prefix, lambda v: f"/dhashmap/{v['cluster']}/members/",
            "Key prefix of the member records (default: /dhashmap/<cluster>/members/).", "PREFIX"),
    Setting("etcd_ttl", "ETCD_TTL", _int_range(2, 3600), 10,
            "Lease TTL in seconds: a node that stops renewing disappears after this long.", "SECONDS"),
    Setting("etcd_poll_interval", "ETCD_POLL_INTERVAL", _duration(0.1, 3600), 5.0,
            "How often to read the members when watching does not work.", "DURATION"),
    Setting("etcd_username", "ETCD_USERNAME", str, "", "etcd user, when etcd has authentication on.", "NAME"),
    Setting("etcd_password", "ETCD_PASSWORD", str, "", "That user's password.", "PASSWORD"),
    Setting("etcd_ca_file", "ETCD_CA_FILE", _path, "",
            "PEM file of the CA that signed etcd's certificate (https endpoints; default: the system's).",
            "FILE"),
    Setting("etcd_cert_file", "ETCD_CERT_FILE", _path, "", "PEM client certificate for etcd (mutual TLS).",
            "FILE"),
    Setting("etcd_key_file", "ETCD_KEY_FILE", _path, "", "PEM key of --etcd-cert-file.", "FILE"),
    Setting("consul_addr", "CONSUL_HTTP_ADDR", lambda raw: _endpoint_list(raw)[0], "http://127.0.0.1:8500",
            "The local Consul agent's HTTP address, host:port or URL (--discovery consul).", "URL"),
    Setting("consul_token", "CONSUL_HTTP_TOKEN", str, "", "Consul ACL token (better given in the environment).",
            "TOKEN"),
    Setting("consul_service", "CONSUL_SERVICE", _node_id, "dhashmap",
            "Consul service name the nodes register as; their cluster name is in its Meta.", "NAME"),
    Setting("consul_ttl", "CONSUL_TTL", _duration(2, 3600), 10.0,
            "TTL of each node's Consul check: a node that stops passing it is dropped after this long.",
            "DURATION"),
    Setting("consul_ca_file", "CONSUL_CACERT", _path, "",
            "PEM file of the CA that signed the agent's certificate (https addresses).", "FILE"),
    Setting("replicas", "REPLICAS", _int_range(1, 9), 3,
            "N: how many nodes hold each key. The same on every node.", "N"),
    Setting("partitions", "PARTITIONS", _int_range(1, 65536), 1024,
            "Q: fixed partitions of the key space. The same on every node, for the cluster's life.", "Q"),
    Setting("weight", "WEIGHT", _int_range(1, MAX_WEIGHT), 1,
            "This node's share of partitions relative to others (ring weight).", "W"),
    Setting("sloppy_quorum", "SLOPPY_QUORUM", _bool, True,
            "Let the next healthy nodes take writes for down replicas, with hints "
            "(false: refuse writes that the preference list cannot take).", "BOOL"),
    Setting("request_timeout", "REQUEST_TIMEOUT", _duration(0.01, 600), 2.0,
            "How long a coordinator waits for one replica's answer.", "DURATION"),
    Setting("health_interval", "HEALTH_INTERVAL", _duration(0.01, 600), 1.0,
            "How often each member is pinged over the native protocol.", "DURATION"),
    Setting("health_timeout", "HEALTH_TIMEOUT", _duration(0.01, 600), 1.0,
            "How long a ping may take before it counts as missed.", "DURATION"),
    Setting("health_threshold", "HEALTH_THRESHOLD", _int_range(1, 100), 3,
            "Missed pings in a row after which a member is dead (fewer: suspect).", "N"),
    Setting("handoff_interval", "HANDOFF_INTERVAL", _duration(0.01, 3600), 1.0,
            "How often hinted writes are offered to their home nodes.", "DURATION"),
    Setting("tombstone_grace", "TOMBSTONE_GRACE", _duration(1, 365 * 86400), 86400.0,
            "How long deletes (and expired values) stay on disk before they are purged; longer than "
            "any node stays down.", "DURATION"),
    Setting("rereplicate_after", "REREPLICATE_AFTER", _duration(0, 30 * 86400), 600.0,
            "How long a member may be dead before its partitions are re-created on the next nodes of the "
            "ring from the surviving replicas (0: at once); shorter than --tombstone-grace.", "DURATION"),
    Setting("handoff_rate", "HANDOFF_RATE", _size(1024, 1 << 40), 2 << 20,
            "Bytes per second this node sends, fetches or drops (after a handoff) when it moves partitions and "
            "repairs replicas. Moving 1 MiB/s costs a node about a third of a core: raise it when nodes "
            "have cores to spare, lower it when client latency suffers (docs/rebalancing.md).",
            "SIZE"),
    Setting("anti_entropy_interval", "ANTI_ENTROPY_INTERVAL", _duration(0, 86400), 60.0,
            "How often this node compares the hash trees of its partitions with the other replicas and "
            "repairs differences (0: never). Must be well under --tombstone-grace.", "DURATION"),
    Setting("drain_on_stop", "DRAIN_ON_STOP", _bool, False,
            "On SIGTERM, hand every partition to its next owners before exiting, as `dhm leave` does.",
            "BOOL"),
    Setting("max_key_size", "MAX_KEY_SIZE", _size(1, 64 * 1024), LMDB_MAX_KEY_SIZE,
            f"Largest key accepted, in bytes after percent-decoding (414 beyond); at most "
            f"{LMDB_MAX_KEY_SIZE} with --storage lmdb.", "SIZE"),
    Setting("max_value_size", "MAX_VALUE_SIZE", _size(1, 1 << 30), 8 * 1024 * 1024,
            "Largest value accepted (413 beyond).", "SIZE"),
    Setting("http_idle_timeout", "HTTP_IDLE_TIMEOUT", _duration(1, 3600), 60.0,
            "Close HTTP connections idle (or stalled mid-request) this long.", "DURATION"),
    Setting("lmdb_commit", "LMDB_COMMIT", _choice("process", "thread"), "process",
            "Where LMDB commits run: a child process (its own GIL; faster under load) or a thread.",
            "WHERE"),
    Setting("lmdb_map_size", "LMDB_MAP_SIZE", _size(1 << 20, 1 << 40), 16 << 30,
            "Largest size the LMDB store may grow to (address space, not disk).", "SIZE"),
    Setting("manhole", "MANHOLE", _manhole, None,
            "Admin Python shell inside the node (docs/admin.md): ssh:PORT[:interface=ADDR] (needs "
            "--manhole-keys), or telnet:PORT for development, loopback only. Off by default.", "LISTEN"),
    Setting("manhole_keys", "MANHOLE_KEYS", _path, "",
            "authorized_keys file of the public keys that may log in to the ssh manhole (read at each "
            "login, so keys can change without a restart).", "FILE"),
)

_BY_NAME = {s.name: s for s in SETTINGS}


@attrs.frozen
class Config:
    node_id: str
    port: int
    bind: str
    advertise: str
    data_dir: str
    storage: str
    log_format: str
    log_level: str
    access_log: bool
    discovery: str
    cluster: str
    grpc_port: int
    peer_port: int
    seed_nodes: tuple[tuple[str, int], ...]
    gossip_port: int
    gossip_profile: str
    gossip_probe_interval: float
    gossip_probe_timeout: float
    gossip_indirect_checks: int
    gossip_suspicion_mult: int
    gossip_retransmit_mult: int
    gossip_interval: float
    gossip_nodes: int
    gossip_push_pull_interval: float
    gossip_mtu: int
    gossip_lifeguard: bool
    gossip_keys: tuple[bytes, ...]
    etcd_endpoints: tuple[str, ...]
    etcd_prefix: str
    etcd_ttl: int
    etcd_poll_interval: float
    etcd_username: str
    etcd_password: str
    etcd_ca_file: str
    etcd_cert_file: str
    etcd_key_file: str
    consul_addr: str
    consul_token: str
    consul_service: str
    consul_ttl: float
    consul_ca_file: str
    replicas: int
    partitions: int
    weight: int
    sloppy_quorum: bool
    request_timeout: float
    health_interval: float
    health_timeout: float
    health_threshold: int
    handoff_interval: float
    tombstone_grace: float
    rereplicate_after: float
    handoff_rate: int
    anti_entropy_interval: float
    drain_on_stop: bool
    max_key_size: int
    max_value_size: int
    http_idle_timeout: float
    lmdb_map_size: int
    lmdb_commit: str
    manhole: ManholeSpec | None
    manhole_keys: str


def read_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file: a mapping of setting names (``node_id`` or ``node-id``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config: {path} is not UTF-8 text: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML: {e}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _BY_NAME:
            known = ", ".join(s.name for s in SETTINGS)
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {known})")
        out[name] = value
    return out


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str],
    config_file: str | None = None,
) -> Config:
    """Resolve every setting from its highest-priority source and validate it.

    ``flags`` maps setting names to values given on the command line (``None``
    for flags not given).
    """
    from_file = read_yaml(config_file) if config_file else {}
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if flags.get(setting.name) is not None:
            raw, source = flags[setting.name], setting.flag
        elif environ.get(setting.env, "") != "":
            raw, source = environ[setting.env], f"${setting.env}"
        elif setting.name in from_file:
            raw, source = from_file[setting.name], f"{config_file}: {setting.name}"
        else:
            default = setting.default
            values[setting.name] = default(values) if callable(default) else default
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}, got {raw!r}") from None
    if values["gossip_probe_timeout"] >= values["gossip_probe_interval"]:
        raise ConfigError(
            f"--gossip-probe-timeout ({values['gossip_probe_timeout']:g}s) must be below --gossip-probe-interval "
            f"({values['gossip_probe_interval']:g}s): a probe needs time left for its indirect checks")
    if values["manhole"] is not None and values["manhole"].kind == "ssh" and not values["manhole_keys"]:
        raise ConfigError("--manhole ssh:... needs --manhole-keys FILE (an authorized_keys file)")
    if values["storage"] == "lmdb" and values["max_key_size"] > LMDB_MAX_KEY_SIZE:
        raise ConfigError(
            f"--max-key-size is at most {LMDB_MAX_KEY_SIZE} bytes with --storage lmdb (LMDB keys are "
            f"at most 511 bytes, and a hint's key is the key after its target's node id), "
            f"got {values['max_key_size']}")
    if values["rereplicate_after"] >= values["tombstone_grace"]:
        # A dead owner holds up the handoff of data other nodes keep for it; held past the
        # grace, that data would come back over deletes whose tombstones were purged meanwhile.
        raise ConfigError("--rereplicate-after must be shorter than --tombstone-grace")
    if values["anti_entropy_interval"] and values["tombstone_grace"] < 4 * values["anti_entropy_interval"]:
        # A tombstone must outlive the repair rounds that carry it to every replica.
        raise ConfigError("--tombstone-grace must be at least 4 x --anti-entropy-interval")
    return Config(**values)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == () or value is None:
        return "none"
    return str(value)


def settings_markdown() -> str:
    """The settings table for docs/configuration.md."""
    rows = ["| flag | environment | YAML key | default | meaning |", "|---|---|---|---|---|"]
    for s in SETTINGS:
        if callable(s.default):
            default = f"({s.default.__doc__})" if s.default.__doc__ else "(derived)"
        else:
            default = f"`{_show(s.default)}`"
        rows.append(f"| `{s.flag}` | `{s.env}` | `{s.name}` | {default} | {s.help} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")
