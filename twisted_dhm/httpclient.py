"""HTTP(S) client connections through the injected network, for treq.

Registries (etcd's JSON gateway, Consul's agent) are reached with treq, whose
``Agent`` normally opens sockets with the global reactor.  Here the agent gets
an endpoint factory that connects through the node's ``INetwork`` instead, so
the same client code runs against a real registry in the daemon and against an
in-memory double in the simulator, and nothing opens a socket behind the
network's back.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from twisted_dhm.network import INetwork


@implementer(IStreamClientEndpoint)
class _NetworkEndpoint:
    def __init__(self, network: INetwork, host: str, port: int, timeout: float) -> None:
        self._network = network
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, factory: Any) -> Deferred:
        return self._network.connect(self._host, self._port, factory, timeout=self._timeout)


class TLSFiles:
    """PEM files for HTTPS: the CA that signs the server (None: the system's), and an
    optional client certificate and key (mutual TLS)."""

    def __init__(self, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None) -> None:
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file

    def options(self, host: str) -> Any:
        trust = None
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        client = None
        if self.cert_file:
            with open(self.cert_file, "rb") as f:
                cert = f.read()
            with open(self.key_file or self.cert_file, "rb") as f:
                key = f.read()
            client = PrivateCertificate.loadPEM(cert + b"\n" + key)
        return optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


@implementer(IAgentEndpointFactory)
class _EndpointFactory:
    def __init__(self, network: INetwork, connect_timeout: float, tls: TLSFiles | None) -> None:
        self._network = network
        self._timeout = connect_timeout
        self._tls = tls or TLSFiles()

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint: IStreamClientEndpoint = _NetworkEndpoint(self._network, host, uri.port, self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.options(host), endpoint)
        return endpoint


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body written at once.  treq's default producer schedules its writes on the
    global reactor's cooperator, which a node on an injected clock must not touch."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _body(data: Any) -> IBodyProducer:
    if isinstance(data, bytes):
        return _BytesProducer(data)
    raise TypeError(f"request bodies are bytes here, not {type(data).__name__}")


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # no "Starting factory" log line for every registry request


class _QuietPool(HTTPConnectionPool):
    _factory = _QuietFactory


def http_client(network: INetwork, clock: Any, connect_timeout: float = 5.0, tls: TLSFiles | None = None,
                persistent: bool = True) -> HTTPClient:
    """A treq client whose connections go through ``network`` (keep-alive unless not ``persistent``).

    Pass ``reactor=clock`` to each request too, so treq's timeouts use the injected clock.
    """
    pool = _QuietPool(clock, persistent=persistent)
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(clock, _EndpointFactory(network, connect_timeout, tls), pool=pool)
    return HTTPClient(agent, data_to_body_producer=_body)
