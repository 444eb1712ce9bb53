"""The daemon logs through twisted.logger: no print() in its code (the CLI helpers may print)."""

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).parents[2] / "twisted_dhm"
# Command-line tools, not the daemon: `make run`'s cluster runner and the settings-table generator.
CLI = {"devcluster.py"}


def prints_in(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    main_blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    in_main = {id(n) for block in main_blocks for n in ast.walk(block)}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
            and id(node) not in in_main]


class NoPrintTests(SynchronousTestCase):
    def test_daemon_code_does_not_print(self):
        files = [p for p in PACKAGE.rglob("*.py") if p.name not in CLI and "testing" not in p.parts]
        self.assertGreater(len(files), 30)
        found = {str(p.relative_to(PACKAGE)): lines for p in files if (lines := prints_in(p))}
        self.assertEqual(found, {})

    def test_the_check_finds_a_print(self):
        path = Path(self.mktemp())
        path.write_text("def f():\n    print('x')\n\nif __name__ == '__main__':\n    print('ok')\n")
        self.assertEqual(prints_in(path), [2])
