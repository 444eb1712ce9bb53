"""Gossip keyring: AES-GCM sealing, every installed key accepted, rotation rules."""

from __future__ import annotations

import itertools

import pytest

from twisted_dhm.membership.swim.keyring import OVERHEAD, AuthenticationFailed, Keyring

K16, K24, K32 = b"a" * 16, b"b" * 24, b"c" * 32


def counter_nonces():
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def test_round_trip_and_overhead():
    ring = Keyring([K16])
    sealed = ring.encrypt(b"hello", b"p")
    assert len(sealed) == 5 + OVERHEAD == 5 + 29
    assert sealed[0] == 1
    assert ring.decrypt(sealed, b"p") == b"hello"


def test_every_key_size_works_and_others_are_refused():
    for key in (K16, K24, K32):
        ring = Keyring([key])
        assert ring.decrypt(ring.encrypt(b"x")) == b"x"
    for bad in (b"", b"x" * 15, b"x" * 33):
        with pytest.raises(ValueError):
            Keyring([bad])
    with pytest.raises(TypeError):
        Keyring(["a" * 16])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        Keyring([])


def test_decrypt_tries_every_installed_key():
    old = Keyring([K16])
    both = Keyring([K32, K16])
    assert both.primary == K32
    assert both.decrypt(old.encrypt(b"from the old key")) == b"from the old key"
    assert both.decrypt(both.encrypt(b"new")) == b"new"
    with pytest.raises(AuthenticationFailed):
        old.decrypt(both.encrypt(b"new"))


def test_rotation_install_use_remove():
    ring = Keyring([K16])
    ring.install(K32)
    assert ring.keys == [K16, K32] and ring.primary == K16
    ring.install(K32)  # idempotent
    assert ring.keys == [K16, K32]
    with pytest.raises(ValueError):
        ring.use(K24)  # not installed
    ring.use(K32)
    assert ring.primary == K32 and ring.keys == [K32, K16]
    with pytest.raises(ValueError):
        ring.remove(K32)  # the primary
    sealed_old = Keyring([K16]).encrypt(b"in flight")
    assert ring.decrypt(sealed_old) == b"in flight"  # still accepted until removed
    ring.remove(K16)
    assert ring.keys == [K32]
    with pytest.raises(AuthenticationFailed):
        ring.decrypt(sealed_old)
    ring.remove(K24)  # not installed: nothing to do


def test_tampering_truncation_label_and_garbage_fail_as_authentication_errors():
    ring = Keyring([K16])
    sealed = ring.encrypt(b"payload", b"p")
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    for bad in (bytes(flipped), sealed[:-1], sealed[:10], b"", b"\x00" + sealed[1:], b"\x02" + sealed[1:]):
        with pytest.raises(AuthenticationFailed):
            ring.decrypt(bad, b"p")
    with pytest.raises(AuthenticationFailed):
        ring.decrypt(sealed, b"s")  # sealed for packets, offered as a stream frame
    assert issubclass(AuthenticationFailed, ValueError)


def test_nonce_source_is_used_and_deterministic():
    a = Keyring([K16], nonce_source=counter_nonces())
    b = Keyring([K16], nonce_source=counter_nonces())
    assert [a.encrypt(b"m") for _ in range(3)] == [b.encrypt(b"m") for _ in range(3)]
    sealed = Keyring([K16], nonce_source=counter_nonces()).encrypt(b"m")
    assert sealed[1:13] == bytes(12)
    with pytest.raises(ValueError):
        Keyring([K16], nonce_source=lambda n: b"short").encrypt(b"m")


def test_default_nonces_differ():
    ring = Keyring([K16])
    assert ring.encrypt(b"m")[1:13] != ring.encrypt(b"m")[1:13]
