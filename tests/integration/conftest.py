import pytest

from twisted_dhm.testing.process import NodeProcess


@pytest.fixture
def start_node(tmp_path):
    """Start real nodes; every one is stopped (SIGKILL if need be) after the test."""
    started = []

    def start(node_id="node1", data_dir=None, **kwargs):
        node = NodeProcess(data_dir or tmp_path / node_id / "data", node_id=node_id, **kwargs)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.kill()


@pytest.fixture
def node(start_node):
    return start_node()
