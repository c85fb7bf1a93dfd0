"""Ed25519 signing through the process's own libcrypto (OpenSSL), for the session's signer.

Why not the cryptography package here: importing its Ed25519 module costs ~7-15 ms of GIL
time (its Rust extension and Python modules), and the supervisor pays it in every session
while the sandboxed command runs, before the journal can be sealed. hashlib has already
loaded libcrypto into this process, so binding the five EVP calls that sign costs well
under a millisecond. Ed25519 signatures are deterministic (RFC 8032): the bytes are the
ones cryptography would produce, and `journal verify` checks them with cryptography.

Anything unexpected (no libcrypto, no Ed25519 in it, a call that fails) makes `load`
return None, and the caller uses cryptography as before.
"""
from __future__ import annotations

import ctypes

NID_ED25519 = 1087              # EVP_PKEY_ED25519 (stable OpenSSL object id)
SEED_BYTES = 32
SIGNATURE_BYTES = 64
_SONAMES = ("libcrypto.so.3", "libcrypto.so.1.1")

_lib = None
_lib_tried = False


def _bind():
    """libcrypto with the prototypes set (pointers as c_void_p: never truncated), or None."""
    global _lib, _lib_tried
    if _lib_tried:
        return _lib
    _lib_tried = True
    vp, sz, buf = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for soname in _SONAMES:
        try:
            lib = ctypes.CDLL(soname)
            lib.EVP_PKEY_new_raw_private_key.argtypes = (ctypes.c_int, vp, buf, sz)
            lib.EVP_PKEY_new_raw_private_key.restype = vp
            lib.EVP_PKEY_get_raw_public_key.argtypes = (vp, buf, ctypes.POINTER(sz))
            lib.EVP_PKEY_get_raw_public_key.restype = ctypes.c_int
            lib.EVP_PKEY_free.argtypes = (vp,)
            lib.EVP_PKEY_free.restype = None
            lib.EVP_MD_CTX_new.argtypes = ()
            lib.EVP_MD_CTX_new.restype = vp
            lib.EVP_MD_CTX_free.argtypes = (vp,)
            lib.EVP_MD_CTX_free.restype = None
            lib.EVP_DigestSignInit.argtypes = (vp, vp, vp, vp, vp)
            lib.EVP_DigestSignInit.restype = ctypes.c_int
            lib.EVP_DigestSign.argtypes = (vp, buf, ctypes.POINTER(sz), buf, sz)
            lib.EVP_DigestSign.restype = ctypes.c_int
        except (OSError, AttributeError):
            continue
        _lib = lib
        return lib
    return None


class _PublicKey:
    """The part of cryptography's Ed25519PublicKey the signer uses."""
    __slots__ = ("_raw",)

    def __init__(self, raw: bytes):
        self._raw = raw

    def public_bytes_raw(self) -> bytes:
        return self._raw


class Ed25519SigningKey:
    """An Ed25519 private key held by libcrypto, with the interface of cryptography's
    Ed25519PrivateKey that the journal's Signer uses: sign() and public_key()."""

    def __init__(self, lib, pkey: int, public_raw: bytes):
        self._lib = lib
        self._pkey = pkey
        self._public = _PublicKey(public_raw)

    def public_key(self) -> _PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        lib = self._lib
        ctx = lib.EVP_MD_CTX_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new failed")
        try:
            if lib.EVP_DigestSignInit(ctx, None, None, None, self._pkey) != 1:
                raise ValueError("libcrypto: EVP_DigestSignInit failed")
            sig = ctypes.create_string_buffer(SIGNATURE_BYTES)
            size = ctypes.c_size_t(SIGNATURE_BYTES)
            if lib.EVP_DigestSign(ctx, sig, ctypes.byref(size), data, len(data)) != 1 or \
                    size.value != SIGNATURE_BYTES:
                raise ValueError("libcrypto: EVP_DigestSign failed")
            return sig.raw
        finally:
            lib.EVP_MD_CTX_free(ctx)

    def __del__(self):
        pkey, self._pkey = self._pkey, None
        if pkey:
            self._lib.EVP_PKEY_free(pkey)


def load(seed: bytes) -> Ed25519SigningKey | None:
    """The signing key for a 32-byte seed, or None when libcrypto cannot provide it (the
    caller then uses cryptography). The key is checked by signing once."""
    if len(seed) != SEED_BYTES:
        return None
    lib = _bind()
    if lib is None:
        return None
    pkey = lib.EVP_PKEY_new_raw_private_key(NID_ED25519, None, seed, len(seed))
    if not pkey:
        return None
    raw = ctypes.create_string_buffer(32)
    size = ctypes.c_size_t(32)
    if lib.EVP_PKEY_get_raw_public_key(pkey, raw, ctypes.byref(size)) != 1 or size.value != 32:
        lib.EVP_PKEY_free(pkey)
        return None
    key = Ed25519SigningKey(lib, pkey, raw.raw)
    try:
        key.sign(b"")
    except (ValueError, MemoryError):
        return None             # (freed by __del__)
    return key
