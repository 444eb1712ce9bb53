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
