"""``dhashmap-server``: the node in the foreground, with the original's flag spelling.

The original Go server took Go-style single-dash flags (``-node-id node1``);
this accepts those as well as ``--node-id`` and runs ``twistd -n dhashmap``.
"""

from __future__ import annotations

import re
import sys

_SINGLE_DASH_LONG = re.compile(r"^-([a-z][a-z0-9-]+)(=.*)?$")


def translate_args(argv: list[str]) -> list[str]:
    """Turn ``-node-id x`` / ``-port=8080`` into ``--node-id x`` / ``--port=8080``."""
    out = []
    for arg in argv:
        match = _SINGLE_DASH_LONG.match(arg)
        if match and len(match.group(1)) > 1:
            arg = "-" + arg
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> None:
    from twisted.scripts.twistd import run

    args = translate_args(sys.argv[1:] if argv is None else argv)
    sys.argv = ["dhashmap-server", "--nodaemon", "--pidfile=", "dhashmap", *args]
    run()


if __name__ == "__main__":
    main()
