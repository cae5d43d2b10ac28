"""A node's persistent identity: one static X25519 keypair.

``node_id`` = first 8 bytes, little-endian, of keyed BLAKE2s-256(public key) with key
``b"net-node-id-v1"`` (the reference's construction, applied to the X25519 key since
that is the key the handshake authenticates).

Key file format: 32 raw private-key bytes, mode 0600, written atomically: a fresh
temporary file in the same directory (``tempfile.mkstemp``: ``O_CREAT|O_EXCL``, mode
0600, unpredictable name, so a planted file or symlink is never written through),
fsynced, then ``os.replace``. :meth:`EntityKeypair.load` refuses (ConfigError) a key
file that is not a regular file or that the group or others may read or write - fix
it with ``chmod 600`` - rather than trusting a key others may have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
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
        """Read a key file written by :meth:`save`.

        ConfigError if it is malformed, not a regular file, or accessible to the group
        or others (mode & 0o077).
        """
        name = os.fspath(path)
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{name}: key file is not a regular file")
            if st.st_mode & 0o077:
                raise ConfigError(
                    f"{name}: key file mode {stat.S_IMODE(st.st_mode):04o} lets the group or "
                    "others access the private key; run chmod 600 on it"
                )
            data = os.read(fd, 33)
        finally:
            os.close(fd)
        if len(data) != 32:
            raise ConfigError(f"{os.fspath(path)}: key file must hold exactly 32 bytes")
        return cls.from_private_bytes(data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the private key with mode 0600, atomically (replaces ``path``)."""
        path = os.fspath(path)
        directory, base = os.path.split(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
        try:
            try:
                os.fchmod(fd, 0o600)
                data = self.private_key
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
