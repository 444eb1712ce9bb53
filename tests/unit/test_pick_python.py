"""tools/pick-python: the interpreter `make` builds .venv with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[2]
PICK = ROOT / "tools" / "pick-python"
CHECK = "import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))"


def pick(path: str) -> str:
    out = subprocess.run([str(PICK)], env={**os.environ, "PATH": path}, capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.strip()


def qualifies(python: str) -> bool:
    return os.access(python, os.X_OK) and subprocess.run([python, "-c", CHECK], capture_output=True,
                                                         timeout=60).returncode == 0


class PickPythonTests(SynchronousTestCase):
    def test_the_choice_can_build_the_virtualenv(self):
        chosen = pick(os.environ["PATH"])
        self.assertTrue(os.path.isabs(chosen), chosen)
        self.assertTrue(qualifies(chosen), f"{chosen} is older than 3.11 or cannot make virtualenvs")

    def test_the_system_python_comes_before_the_one_on_path(self):
        # A python3 first on PATH (as pyenv's shims are) that would qualify too.
        bin_dir = Path(self.mktemp())
        bin_dir.mkdir()
        other = bin_dir / "python3"
        other.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        other.chmod(0o755)
        expected = "/usr/bin/python3" if qualifies("/usr/bin/python3") else str(other)
        self.assertEqual(pick(f"{bin_dir}:/usr/bin:/bin"), expected)

    def test_the_system_python_is_found_by_its_path_not_through_path(self):
        # PATH may not hold /usr/bin at all (a minimal sudo or CI environment); with nothing
        # usable the script still prints a name, so make fails on it with a clear message.
        expected = "/usr/bin/python3" if qualifies("/usr/bin/python3") else "python3"
        self.assertEqual(pick("/nonexistent"), expected)
