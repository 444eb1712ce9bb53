"""The admin shell of a real node, over real SSH (OpenSSH's ``ssh`` client) with a generated key."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted_dhm.ring import partition_of
from twisted_dhm.testing.process import free_port

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def ssh_binary() -> str:
    path = shutil.which("ssh")
    assert path, "the manhole test needs OpenSSH's client: apt-get install openssh-client (.ci/run does)"
    return path


def make_key(directory: Path, name: str) -> tuple[Path, bytes]:
    """An Ed25519 key pair: the private key file (mode 0600, as ssh insists) and the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = directory / name
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return path, public + b" " + name.encode() + b"\n"


def ssh_session(port: int, key: Path, lines: list[str]) -> subprocess.CompletedProcess:
    """Log in with ``key``, type ``lines`` at the prompt, then Ctrl-D; the screen as text."""
    command = [
        ssh_binary(), "-tt", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-F", "/dev/null", "admin@127.0.0.1",
    ]
    typed = "".join(line + "\r" for line in lines) + "\x04"
    result = subprocess.run(command, input=typed.encode(), capture_output=True, timeout=30)
    result.stdout = ANSI.sub("", result.stdout.decode(errors="replace"))
    return result


def test_ssh_manhole_where_and_members(start_node, tmp_path):
    key, public = make_key(tmp_path, "operator")
    stranger, _ = make_key(tmp_path, "stranger")
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(b"# dhashmap operators\n" + public)
    manhole_port = free_port()
    node = start_node("node1", extra_args=(
        "--storage", "lmdb", "--manhole", f"ssh:{manhole_port}:interface=127.0.0.1",
        "--manhole-keys", str(authorized)))

    result = ssh_session(manhole_port, key, ['where(b"key")', "[m['id'] for m in members()]", "stats()['node']"])
    partition = partition_of(b"key", 1024)
    assert f"'partition': {partition}, 'owners': ['node1']" in result.stdout, result.stdout + node.log()
    assert "['node1']" in result.stdout
    assert "'node1'" in result.stdout
    # The host key is kept with the data: the same key after a restart.
    host_key = Path(node.data_dir) / "manhole_host_key"
    assert host_key.exists() and (host_key.stat().st_mode & 0o777) == 0o600

    refused = ssh_session(manhole_port, stranger, ["1 + 1"])
    assert refused.returncode == 255, refused.stdout
    assert "Permission denied" in refused.stderr.decode()
    status, _, _ = node.request("GET", "/health")
    assert status == 200


def test_telnet_manhole_refuses_other_interfaces(tmp_path):
    twistd = str(Path(sys.executable).with_name("twistd"))
    env = {k: v for k, v in os.environ.items() if k not in ("MANHOLE", "MANHOLE_KEYS")}
    result = subprocess.run(
        [twistd, "-n", "--pidfile=", "dhashmap", "--node-id", "n1", "--storage", "memory",
         "--manhole", "telnet:2323:interface=0.0.0.0"],
        capture_output=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert b"--manhole: telnet has no authentication" in result.stderr
    assert b"loopback only" in result.stderr
