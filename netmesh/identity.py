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

Handshake clock (:class:`HandshakeClock`): every initiation carries a timestamp and a
responder refuses one that is not newer than the last it accepted from the same key
(WireGuard's replay rule, ``netmesh.link.handshake.InitiationReplayGuard``). A node
restarted with its wall clock behind would be refused as a replay until the clock
caught up. So the initiator never goes backwards: ``timestamp = max(wall clock, last +
1 ns)``, and ``last`` survives restarts in a sidecar file next to the key file
(``<key file>.hsclock``, :func:`clock_file_of`). The file holds a *ceiling*: a value
above every timestamp issued so far, written (atomically, before any timestamp above
the previous ceiling is handed out) as ``issued + reserve`` so the file is rewritten
at most once per ``reserve`` of clock progress. Replay protection is unchanged: the
responder still refuses anything not strictly newer.

Sidecar format: 8 bytes, big-endian u64 nanoseconds since the Unix epoch, mode 0600.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from netmesh.errors import ConfigError

NODE_ID_KEY = b"net-node-id-v1"
CLOCK_SUFFIX = ".hsclock"
#: default reserve of a handshake clock ceiling, in nanoseconds (10 s)
CLOCK_RESERVE_NS = 10_000_000_000

log = logging.getLogger(__name__)


def node_id_of(public_key: bytes) -> int:
    """The u64 node id of a 32-byte X25519 public key."""
    digest = hashlib.blake2s(bytes(public_key), key=NODE_ID_KEY).digest()
    return int.from_bytes(digest[:8], "little")


def read_private_file(path: str, what: str, secret: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of the secret file ``path`` (a key or a PSK). ConfigError if it
    is not a regular file or the group or others may access it (mode & 0o077, as ssh
    refuses private keys); OSError (e.g. FileNotFoundError) for the caller to word."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path}: {what} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{path}: {what} mode {stat.S_IMODE(st.st_mode):04o} lets the group or "
                f"others access {secret}; run chmod 600 on it"
            )
        return os.read(fd, limit)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EntityKeypair:
    """Static X25519 keypair of a node. ``private_key``/``public_key`` are 32 bytes.

    ``key_file``: the file it was loaded from or saved to (None for a key that only
    lives in memory); a MeshNode keeps its handshake clock next to it.
    """

    private_key: bytes = field(repr=False)
    public_key: bytes
    node_id: int
    key_file: str | None = field(default=None, compare=False, repr=False)

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
        data = read_private_file(name, "key file", "the private key", 33)
        if len(data) != 32:
            raise ConfigError(f"{os.fspath(path)}: key file must hold exactly 32 bytes")
        kp = cls.from_private_bytes(data)
        return cls(kp.private_key, kp.public_key, kp.node_id, name)

    def save(self, path: str | os.PathLike[str]) -> EntityKeypair:
        """Write the private key with mode 0600, atomically (replaces ``path``).

        Returns the keypair bound to that file (``key_file`` set)."""
        name = os.fspath(path)
        _write_atomic(name, self.private_key)
        return EntityKeypair(self.private_key, self.public_key, self.node_id, name)


def _write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file, fsync, rename, fsync dir."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory or ".")
    try:
        try:
            os.fchmod(fd, 0o600)
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
    with contextlib.suppress(OSError):  # the rename is durable once the directory is
        dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def clock_file_of(key_file: str | os.PathLike[str]) -> str:
    """The handshake clock sidecar of a key file."""
    return os.fspath(key_file) + CLOCK_SUFFIX


def next_timestamp(wall_ns: int, last_ns: int) -> int:
    """The next initiation timestamp: the wall clock, but never at or below ``last_ns``."""
    return max(wall_ns, last_ns + 1)


class HandshakeClock:
    """Strictly increasing initiation timestamps (ns since the epoch) across restarts.

    ``path``: the sidecar file (None: in memory only, monotonic within this process).
    ``wall_ns``: the wall clock (default ``time.time_ns``; tests inject a skewed one).
    ``reserve_ns``: how far above an issued timestamp the persisted ceiling is set.
    Raises ConfigError if the sidecar exists but is not 8 bytes. A failure to write
    the sidecar is logged (warning) and counted in ``write_errors``; timestamps stay
    monotonic in memory (only the restart-with-a-slow-clock case is then unprotected).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        reserve_ns: int = CLOCK_RESERVE_NS,
    ) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._wall = wall_ns
        self._reserve = reserve_ns
        self._last = 0
        self._ceiling = 0
        self.writes = 0
        self.write_errors = 0
        if self.path is not None:
            try:
                with open(self.path, "rb") as f:
                    data = f.read(9)
            except FileNotFoundError:
                data = None
            if data is not None:
                if len(data) != 8:
                    raise ConfigError(f"{self.path}: handshake clock file must hold 8 bytes")
                self._last = self._ceiling = int.from_bytes(data, "big")

    @property
    def last(self) -> int:
        """The greatest timestamp issued or persisted so far (0 if none)."""
        return self._last

    def next_ns(self) -> int:
        """The next timestamp; persisted (as a ceiling) before it is returned."""
        ns = next_timestamp(self._wall(), self._last)
        if self.path is not None and ns > self._ceiling:
            ceiling = ns + self._reserve
            try:
                _write_atomic(self.path, ceiling.to_bytes(8, "big"))
            except OSError as exc:
                self.write_errors += 1
                log.warning("cannot persist the handshake clock to %s: %s", self.path, exc)
            else:
                self.writes += 1
                self._ceiling = ceiling
        self._last = ns
        return ns
