"""Ed25519 signing keys for journals.

The private key lives in the user's config directory (0600, in a 0700 directory), is
read by the supervisor only after the sandbox has been started (by the journal's writer
thread, off the startup path), and its directory is masked inside the sandbox. The key id
names the public key in every session.start and checkpoint, so a verifier can tell which
key to trust without trusting the file. Starting a session needs only the public key file
(read without the cryptography library); cryptography is loaded where a key is used.
"""
from __future__ import annotations

import base64
import os
from hashlib import sha256
from pathlib import Path

from aarm_sandbox.xdg import config_dir

TYPE_CHECKING = False      # (typing itself costs the startup path ~4 ms)
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (Ed25519PrivateKey,
                                                                   Ed25519PublicKey)

# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): 32 raw key bytes follow.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
# DER prefix of an unencrypted Ed25519 PKCS#8 PrivateKeyInfo without attributes or public
# key (RFC 8410), as `generate` writes it: the 32-byte seed follows.
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")

PRIVATE_NAME = "journal-ed25519.pem"
PUBLIC_NAME = "journal-ed25519.pub"


class KeyFileError(Exception):
    """A key that cannot be read or used: the message names the file and the fix."""


def key_dir() -> Path:
    return config_dir() / "keys"


def trusted_dir() -> Path:
    return config_dir() / "trusted-keys"


def raw_public(pub: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes (without importing cryptography's serialization module, which
    costs the startup path tens of milliseconds of GIL time)."""
    return pub.public_bytes_raw()


def key_id(pub: Ed25519PublicKey) -> str:
    return key_id_of_raw(raw_public(pub))


def key_id_of_raw(raw: bytes) -> str:
    return "ed25519:" + sha256(raw).hexdigest()[:16]


def public_pem(pub: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _pem_der(data: bytes, label: bytes) -> bytes | None:
    """The DER bytes of exactly one PEM block labelled `label` (as `generate` writes
    them), or None for anything else: the callers then ask cryptography's parser, whose
    module costs the supervisor's startup ~20 ms of GIL time when it is imported."""
    lines = [line.strip() for line in data.strip().splitlines()]
    if len(lines) < 3 or lines[0] != b"-----BEGIN %s-----" % label or \
            lines[-1] != b"-----END %s-----" % label:
        return None
    try:
        return base64.b64decode(b"".join(lines[1:-1]), validate=True)
    except ValueError:
        return None


def raw_public_from_pem(data: bytes) -> bytes | None:
    """The 32 raw bytes of an Ed25519 public key PEM (SubjectPublicKeyInfo), or None."""
    der = _pem_der(data, b"PUBLIC KEY")
    if der is not None and len(der) == 44 and der[:12] == _ED25519_SPKI:
        return der[12:]
    return None


def seed_from_pem(data: bytes) -> bytes | None:
    """The 32-byte seed of an Ed25519 private key PEM (one unencrypted PKCS#8 block), or
    None (the caller's fallback parser also says what is wrong)."""
    der = _pem_der(data, b"PRIVATE KEY")
    if der is not None and len(der) == 48 and der[:16] == _ED25519_PKCS8:
        return der[16:]
    return None


class KeyPair:
    """The user's signing key pair, named by its public half (a plain class: this module
    is on `run`'s startup path, where every dataclass definition costs ~0.5 ms)."""

    def __init__(self, private_path: Path, public_path: Path, key_id: str,
                 public_raw: bytes | None = None):
        self.private_path = private_path
        self.public_path = public_path
        self.key_id = key_id
        self.public_raw = public_raw      # known without loading the private key


def generate(directory: Path | None = None, force: bool = False) -> KeyPair:
    d = directory or key_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    priv_path, pub_path = d / PRIVATE_NAME, d / PUBLIC_NAME
    if priv_path.exists() and not force:
        raise KeyFileError(f"{priv_path} already exists (use --force to replace it; journals "
                        "signed with the old key then need its public key to verify)")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_atomically(priv_path, pem, 0o600)
    _write_atomically(pub_path, public_pem(key.public_key()), 0o644)
    raw = raw_public(key.public_key())
    return KeyPair(priv_path, pub_path, key_id_of_raw(raw), raw)


def ensure(directory: Path | None = None) -> tuple[KeyPair, bool]:
    """The user's key pair, created when missing. Returns (pair, created)."""
    d = directory or key_dir()
    priv_path = d / PRIVATE_NAME
    if priv_path.exists():
        # The public half names the key; the private one is read later, by the writer
        # thread, once the sandbox runs (and checked against this).
        try:
            raw = raw_public_from_pem((d / PUBLIC_NAME).read_bytes())
        except OSError:
            raw = None
        if raw is not None:
            return KeyPair(priv_path, d / PUBLIC_NAME, key_id_of_raw(raw), raw), False
        pub = load_private(priv_path).public_key()
        return KeyPair(priv_path, d / PUBLIC_NAME, key_id(pub), raw_public(pub)), False
    try:
        return generate(d), True
    except KeyFileError:                 # created concurrently by another run
        return ensure(d)


def load_private(path: Path) -> Ed25519PrivateKey:
    return _parse_private(path, _read_private(path))


def load_signing_key(path: Path):
    """The key a session signs its journal with (see load_private for the checks and
    errors): held by the process's libcrypto when the file is exactly what `generate`
    writes, so a session never imports cryptography (journal.libcrypto_ed25519), else
    cryptography's Ed25519PrivateKey. Either has sign() and public_key().public_bytes_raw()."""
    data = _read_private(path)
    seed = seed_from_pem(data)
    if seed is not None:
        from aarm_sandbox.journal import libcrypto_ed25519
        key = libcrypto_ed25519.load(seed)
        if key is not None:
            return key
    return _parse_private(path, data)


def _read_private(path: Path) -> bytes:
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise KeyFileError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}): "
                            f"chmod 600 {path}")
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the signing key {path}: {e.strerror}") from None


def _parse_private(path: Path, data: bytes) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    seed = seed_from_pem(data)
    if seed is not None:
        return Ed25519PrivateKey.from_private_bytes(seed)
    from cryptography.hazmat.primitives import serialization
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({e}); "
                        "create a new one with `aarm-sandbox keygen --force`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key; create one with `aarm-sandbox keygen`")
    return key


def load_public(spec: str) -> Ed25519PublicKey:
    """A public key from a PEM file, or the raw key as base64 (as in session.start)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    data: bytes
    if os.path.exists(spec):
        try:
            data = Path(spec).read_bytes()
        except OSError as e:
            raise KeyFileError(f"cannot read key {spec}: {e.strerror}") from None
        if b"PRIVATE KEY" in data:
            raise KeyFileError(f"{spec} is a private key: pass the public key "
                            "(`aarm-sandbox keys export`)")
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError as e:
            raise KeyFileError(f"{spec}: not a PEM public key ({e})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{spec}: not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(spec, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFileError(f"--key {spec}: no such file, and not a base64 Ed25519 public key") from None


def trusted_keys(extra: list[str]) -> dict[str, Ed25519PublicKey]:
    """Keys `journal verify` accepts: those named on the command line, the local key pair,
    and the public keys in the trusted-keys directory."""
    keys: dict[str, Ed25519PublicKey] = {}
    for spec in extra:
        k = load_public(spec)
        keys[key_id(k)] = k
    candidates = [key_dir() / PUBLIC_NAME]
    if trusted_dir().is_dir():
        candidates += sorted(trusted_dir().glob("*.pub"))
    for p in candidates:
        if p.is_file():
            try:
                k = load_public(str(p))
            except KeyFileError:
                continue
            keys[key_id(k)] = k
    return keys


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
