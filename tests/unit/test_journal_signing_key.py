"""The session's signing key without cryptography: the PEM keygen writes is parsed by hand
and signed with through libcrypto; every other key file goes to cryptography as before."""
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aarm_sandbox.journal import keys, libcrypto_ed25519


@pytest.fixture
def pair(tmp_path):
    return keys.generate(tmp_path)


def test_signatures_are_the_ones_cryptography_makes(pair):
    fast = keys.load_signing_key(pair.private_path)
    assert isinstance(fast, libcrypto_ed25519.Ed25519SigningKey)
    reference = keys.load_private(pair.private_path)
    assert fast.public_key().public_bytes_raw() == pair.public_raw
    for message in (b"", b"checkpoint", os.urandom(4096)):
        signature = fast.sign(message)
        assert signature == reference.sign(message)
        reference.public_key().verify(signature, message)


def test_seed_is_read_only_from_exactly_what_keygen_writes(pair, tmp_path):
    pem = pair.private_path.read_bytes()
    seed = keys.seed_from_pem(pem)
    assert Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() == pair.public_raw
    assert keys.seed_from_pem(b"# note\n" + pem) is None
    assert keys.seed_from_pem(pem.replace(b"PRIVATE KEY", b"PUBLIC KEY")) is None
    encrypted = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"))
    assert keys.seed_from_pem(encrypted) is None


def test_the_public_half_is_read_by_the_same_strict_parser(pair, tmp_path):
    """The key id comes from the public file parsed by hand; anything but exactly what
    keygen writes gives None, and `ensure` then derives it from the private key."""
    pem = pair.public_path.read_bytes()
    assert keys.raw_public_from_pem(pem) == pair.public_raw
    assert keys.raw_public_from_pem(b"# note\n" + pem) is None
    assert keys.raw_public_from_pem(pem.replace(b"PUBLIC KEY", b"PRIVATE KEY")) is None
    assert keys.raw_public_from_pem(pair.private_path.read_bytes()) is None
    pair.public_path.write_bytes(b"# a comment some tool added\n" + pem)
    again, created = keys.ensure(tmp_path)
    assert not created and again.key_id == pair.key_id


def test_other_key_files_keep_cryptographys_errors(tmp_path):
    path = tmp_path / "k.pem"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    os.chmod(path, 0o600)
    with pytest.raises(keys.KeyFileError, match="is not an unencrypted PEM private key"):
        keys.load_signing_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyFileError, match=r"is readable by others \(mode 644\)"):
        keys.load_signing_key(path)


def test_without_libcrypto_the_key_comes_from_cryptography(pair, monkeypatch):
    monkeypatch.setattr(libcrypto_ed25519, "_SONAMES", ("libcrypto-does-not-exist.so.0",))
    monkeypatch.setattr(libcrypto_ed25519, "_lib", None)
    monkeypatch.setattr(libcrypto_ed25519, "_lib_tried", False)
    key = keys.load_signing_key(pair.private_path)
    assert isinstance(key, Ed25519PrivateKey)
    assert key.public_key().public_bytes_raw() == pair.public_raw
