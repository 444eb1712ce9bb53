"""AES-GCM keys for gossip encryption, with rotation.

A rotation across a cluster is three steps, each applied on every node before
the next starts: ``install(new)`` (everyone can now read both), ``use(new)``
(everyone now writes with the new key, still reads the old) and ``remove(old)``.
Because :meth:`Keyring.decrypt` tries every installed key, no packet is lost at
any step.

Wire form of one sealed message::

    0x01 | nonce (12 bytes) | ciphertext | tag (16 bytes)

The version byte and a caller-chosen ``label`` are the associated data, so a
UDP packet cannot be replayed as a stream frame (different label) and a future
format cannot be confused with this one.

Nonces come from ``nonce_source`` (``os.urandom`` by default): random 96-bit
nonces are safe for about 2**32 messages per key.  The simulator passes a
deterministic source so a seeded run stays reproducible; production must not,
since a repeated nonce under one key breaks GCM.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENCRYPTED_VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
#: Bytes sealing adds to a message: version byte, nonce and tag.
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE
KEY_SIZES = (16, 24, 32)

_VERSION_BYTE = bytes([ENCRYPTED_VERSION])


class AuthenticationFailed(ValueError):
    """No installed key opens the message (wrong key, tampered, truncated or not encrypted)."""


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray):
        raise TypeError(f"a gossip key must be bytes, not {type(key).__name__}")
    if len(key) not in KEY_SIZES:
        raise ValueError(f"a gossip key must be 16, 24 or 32 bytes (AES-128/192/256), got {len(key)} bytes")
    return bytes(key)


class Keyring:
    """Installed keys; the first is the primary, used to encrypt."""

    def __init__(self, keys: Sequence[bytes], *, nonce_source: Callable[[int], bytes] | None = None) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        self._nonce_source = nonce_source or os.urandom
        self._keys: list[bytes] = []
        self._ciphers: list[AESGCM] = []
        for key in keys:
            self.install(key)

    @property
    def keys(self) -> list[bytes]:
        return list(self._keys)

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def install(self, key: bytes) -> None:
        """Accept messages sealed with ``key`` too (it becomes primary only if it is the first)."""
        key = _check_key(key)
        if key in self._keys:
            return
        self._keys.append(key)
        self._ciphers.append(AESGCM(key))

    def use(self, key: bytes) -> None:
        """Seal with ``key`` from now on; it must already be installed."""
        key = _check_key(key)
        if key not in self._keys:
            raise ValueError("install a gossip key before making it primary")
        i = self._keys.index(key)
        self._keys.insert(0, self._keys.pop(i))
        self._ciphers.insert(0, self._ciphers.pop(i))

    def remove(self, key: bytes) -> None:
        """Stop accepting ``key``; the primary cannot be removed (``use`` another first)."""
        key = _check_key(key)
        if key == self._keys[0]:
            raise ValueError("cannot remove the primary gossip key; use() another key first")
        if key in self._keys:
            i = self._keys.index(key)
            del self._keys[i]
            del self._ciphers[i]

    def encrypt(self, plain: bytes, label: bytes = b"") -> bytes:
        nonce = self._nonce_source(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce_source returned {len(nonce)} bytes, need {NONCE_SIZE}")
        return _VERSION_BYTE + nonce + self._ciphers[0].encrypt(nonce, plain, _VERSION_BYTE + label)

    def decrypt(self, data: bytes, label: bytes = b"") -> bytes:
        """Open ``data`` with whichever installed key sealed it, primary first."""
        if len(data) < OVERHEAD or data[0] != ENCRYPTED_VERSION:
            raise AuthenticationFailed("not an encrypted gossip message (too short or unknown version)")
        nonce = data[1 : 1 + NONCE_SIZE]
        sealed = data[1 + NONCE_SIZE :]
        aad = _VERSION_BYTE + label
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
        raise AuthenticationFailed("no installed gossip key opens this message")
