"""The systemd unit example (docs/systemd/): valid for systemd, and its settings are the node's."""

import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twisted_dhm.config import SETTINGS, load_config

DOCS = Path(__file__).parents[2] / "docs" / "systemd"
SETTING_VARS = {s.env for s in SETTINGS}


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


class SystemdUnitTests(SynchronousTestCase):
    def setUp(self):
        self.unit = (DOCS / "dhashmap.service").read_text()

    def test_systemd_analyze_verify(self):
        analyze = shutil.which("systemd-analyze")
        self.assertTrue(analyze, "systemd-analyze is missing: apt-get install systemd (.ci/run does)")
        unit = Path(self.mktemp())
        unit.mkdir()
        # The unit as installed, but starting the twistd of this environment (verify wants it to exist).
        twistd = str(Path(sys.executable).with_name("twistd"))
        (unit / "dhashmap.service").write_text(self.unit.replace("/opt/dhashmap/bin/twistd", twistd))
        result = subprocess.run([analyze, "verify", str(unit / "dhashmap.service")], capture_output=True,
                                timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, b""))

    def test_environment_is_settings(self):
        lines = [line.split("=", 1)[1] for line in self.unit.splitlines() if line.startswith("Environment=")]
        names = {pair.split("=", 1)[0] for line in lines for pair in line.split()}
        self.assertEqual(names - {"PYTHONUNBUFFERED"} - SETTING_VARS, set())
        self.assertIn("ExecStart=/opt/dhashmap/bin/twistd --nodaemon --pidfile= dhashmap", self.unit)
        self.assertIn("User=dhashmap", self.unit)
        self.assertIn("RestartPreventExitStatus=2", self.unit)  # a configuration error: do not loop

    def test_example_env_file_is_a_valid_configuration(self):
        env = env_file(DOCS / "dhashmap.env")
        self.assertEqual(set(env) - SETTING_VARS, set())
        config = load_config({}, env)
        self.assertEqual((config.node_id, config.discovery), ("node1", "swim"))
