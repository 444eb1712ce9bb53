"""The helpers the integration tests start real processes with."""

import socket

from twisted_dhm.testing.process import free_port


def test_free_port_never_hands_out_a_port_twice():
    # The kernel may return the same ephemeral port to consecutive bind(0)
    # calls; a node given that port for two listeners fails to start.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_free_port_is_bindable():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        assert s.getsockname()[1] == port


def test_free_port_is_outside_the_ports_outgoing_connections_get():
    # An ephemeral port may be given to any process's outgoing connection between the pick and
    # the server's bind ("address already in use" from a Consul agent in a busy suite).
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    ports = [free_port() for _ in range(50)]
    assert not [p for p in ports if low <= p <= high]
    for port in ports[:5]:  # UDP too: gossip listens on both with one number
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
