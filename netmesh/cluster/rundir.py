"""The per-user run directory and the names clusters and node daemons serve clients by.

Directory: ``$NETMESH_RUN_DIR``, else ``$XDG_RUNTIME_DIR/netmesh``, else
``/tmp/netmesh-<uid>``; created 0700 and refused when another user owns it or others
can enter it (a shared ``/tmp`` must not let another user plant sockets for us).

A served name ``N`` is ``N.sock`` (a Unix stream socket, mode 0600) next to ``N.lock``,
which the serving process holds with ``flock`` for as long as it serves: a second
server of the same name gets :class:`~netmesh.errors.NameTaken`; a socket whose lock
nobody holds belongs to a dead run and is replaced. Peers are checked with
``SO_PEERCRED``: only the same uid is served (like the socket's mode, and checked
again because a socket's mode is not a boundary on every system).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass

from netmesh.errors import ConfigError, NameTaken

NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UCRED = struct.Struct("3i")  # pid, uid, gid


def run_dir(create: bool = True) -> str:
    """The run directory (see the module doc); ConfigError when it is not private."""
    path = os.environ.get("NETMESH_RUN_DIR")
    if not path:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        path = (
            os.path.join(xdg, "netmesh")
            if xdg
            else os.path.join(tempfile.gettempdir(), f"netmesh-{os.getuid()}")
        )
    if create:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run directory {path!r} cannot be created: {exc}") from None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    if st.st_uid != os.getuid():
        raise ConfigError(f"run directory {path!r} belongs to uid {st.st_uid}, not to us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def check_name(name: str) -> str:
    """A served name: 1-64 of ``[A-Za-z0-9._-]``, not starting with ``.``/``-``/``_``."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise ConfigError(
            f"cluster name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return name


def socket_path(name: str) -> str:
    return os.path.join(run_dir(create=False), f"{check_name(name)}.sock")


@dataclass
class Claim:
    """A served name, held: the lock fd and the listening socket. ``close()`` frees both
    and removes the socket file."""

    name: str
    path: str
    lock_fd: int
    listener: socket.socket

    def close(self) -> None:
        if self.lock_fd < 0:
            return
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.lock_fd)  # releases the flock last: the name is free after this
        self.lock_fd = -1


def claim(name: str) -> Claim:
    """Take ``name`` and listen on its socket. Raises NameTaken when a live process
    serves it, ConfigError for a bad name or run directory."""
    check_name(name)
    d = run_dir()
    lock_path = os.path.join(d, f"{name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise NameTaken(f"a cluster named {name!r} is already running (pid {holder})") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        path = os.path.join(d, f"{name}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead run's socket: its lock was free
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        listener.listen(64)
    except BaseException:
        os.close(fd)
        raise
    return Claim(name, path, fd, listener)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return int(_UCRED.unpack(raw)[1])


def served_names() -> list[str]:
    """Names whose server is alive (their lock is held), sorted."""
    d = run_dir(create=False)
    if not os.path.isdir(d):
        return []
    out = []
    for entry in sorted(os.listdir(d)):
        if not entry.endswith(".sock"):
            continue
        name = entry[: -len(".sock")]
        with contextlib.suppress(OSError):
            fd = os.open(os.path.join(d, f"{name}.lock"), os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                out.append(name)
            finally:
                os.close(fd)
    return out
