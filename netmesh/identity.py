"""A node's persistent identity: one static X25519 keypair.

``node_id`` = first 8 bytes, little-endian, of keyed BLAKE2s-256(public key) with key
``b"net-node-id-v1"`` (the reference's construction, applied to the X25519 key since
that is the key the handshake authenticates).

Key file format: 32 raw private-key bytes, mode 0600, written atomically
(temporary file + rename).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netmesh.errors import ConfigError

NODE_ID_KEY = b"net-node-id-v1"


def node_id_of(public_key: bytes) -> int:
    """The u64 node id of a 32-byte X25519 public key."""
    digest = hashlib.blake2s(bytes(public_key), key=NODE_ID_KEY).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class EntityKeypair:
    """Static X25519 keypair of a node. ``private_key``/``public_key`` are 32 bytes."""

    private_key: bytes = field(repr=False)
    public_key: bytes
    node_id: int

    @classmethod
    def from_private_bytes(cls, private_key: bytes) -> EntityKeypair:
        if len(private_key) != 32:
            raise ConfigError("an X25519 private key is 32 bytes")
        pub = X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()
        return cls(bytes(private_key), pub, node_id_of(pub))

    @classmethod
    def generate(cls) -> EntityKeypair:
        """A fresh keypair from the OS CSPRNG."""
        return cls.from_private_bytes(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EntityKeypair:
        """Read a key file written by :meth:`save`; ConfigError if it is malformed."""
        with open(path, "rb") as f:
            data = f.read(33)
        if len(data) != 32:
            raise ConfigError(f"{os.fspath(path)}: key file must hold exactly 32 bytes")
        return cls.from_private_bytes(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key with mode 0600, atomically (replaces ``path``)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private_key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
