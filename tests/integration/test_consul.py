"""Membership through a real Consul agent (v1.14.8 from tools/get-consul.sh), with real dhashmap processes."""

import time

import pytest

from twisted_dhm.testing.consul import ConsulAgentProcess
from twisted_dhm.testing.process import NodeProcess, wait_for

pytestmark = pytest.mark.integration

TTL = 3




@pytest.fixture
def consul(tmp_path):
    agent = ConsulAgentProcess(tmp_path / "consul").start()
    yield agent
    agent.stop()


@pytest.fixture
def consul_nodes(tmp_path):
    started: list[NodeProcess] = []

    def start(address, names=("c1", "c2", "c3"), extra=(), env=None):
        nodes = []
        for name in names:
            node = NodeProcess(tmp_path / name / "data", node_id=name, env={"CONSUL_HTTP_ADDR": address, **(env or {})})
            node.extra_args = ("--discovery", "consul", "--consul-ttl", str(TTL), "--health-interval", "0.3",
                               "--request-timeout", "1", *extra)
            started.append(node)
            nodes.append(node.start())
        return nodes

    yield start
    for node in started:
        node.kill()


def test_three_nodes_find_each_other_and_a_killed_one_fails_its_check(consul, consul_nodes):
    nodes = consul_nodes(consul.address)
    everyone = {"c1": "alive", "c2": "alive", "c3": "alive"}
    assert wait_for(lambda: all(n.member_states() == everyone for n in nodes)), [n.member_states() for n in nodes]
    assert consul.passing() == {"c1", "c2", "c3"}
    service = consul.get("/v1/agent/service/dhashmap-c2")
    assert service["Meta"]["peer_port"] == str(nodes[1].peer_port) and service["Port"] == nodes[1].port
    assert nodes[0].request("PUT", "/v1/kv/k", b"v")[0] == 201

    nodes[2].kill()
    killed = time.monotonic()
    assert wait_for(lambda: "c3" not in consul.passing(), deadline=TTL + 5)
    assert time.monotonic() - killed <= TTL + 5
    assert wait_for(lambda: all(n.member_states().get("c3") == "dead" for n in nodes[:2]), deadline=3)

    nodes[2].start()
    assert wait_for(lambda: all(n.member_states().get("c3") == "alive" for n in nodes[:2]), deadline=15)


def test_a_clean_stop_deregisters(consul, consul_nodes):
    nodes = consul_nodes(consul.address, names=("c1", "c2"))
    assert wait_for(lambda: nodes[0].member_states().get("c2") == "alive")
    nodes[1].stop()
    assert "c2" not in consul.passing()
    with pytest.raises(OSError):  # 404: the service is gone from the agent
        consul.get("/v1/agent/service/dhashmap-c2")
    assert wait_for(lambda: nodes[0].member_states().get("c2") == "dead", deadline=3)


def test_agent_restart_without_its_state(consul, consul_nodes):
    nodes = consul_nodes(consul.address, names=("c1", "c2"))
    assert wait_for(lambda: nodes[0].member_states() == {"c1": "alive", "c2": "alive"})
    consul.stop()
    assert wait_for(lambda: nodes[0].readiness()["status"] == "degraded", deadline=TTL + 5)
    assert nodes[0].request("PUT", "/v1/kv/during", b"outage")[0] == 201
    assert nodes[0].member_states() == {"c1": "alive", "c2": "alive"}, "the last known view stays"

    consul.start()  # -dev keeps nothing: both nodes must register again by themselves
    assert wait_for(lambda: consul.passing() == {"c1", "c2"}, deadline=20), [n.log() for n in nodes]
    assert wait_for(lambda: all(n.readiness()["status"] == "ready" for n in nodes), deadline=10)
    assert nodes[1].member_states() == {"c1": "alive", "c2": "alive"}


def test_acl_token(tmp_path, consul_nodes):
    agent = ConsulAgentProcess(tmp_path / "consul-acl", token="root-token").start()
    try:
        good = consul_nodes(agent.address, names=("c1",), env={"CONSUL_HTTP_TOKEN": "root-token"})[0]
        assert wait_for(lambda: agent.passing() == {"c1"}, deadline=10), good.log()
        bad = consul_nodes(agent.address, names=("c2",))[0]
        assert wait_for(lambda: "403" in " ".join(bad.readiness().get("problems", [])), deadline=10), bad.readiness()
        assert agent.passing() == {"c1"}
    finally:
        agent.stop()
