"""The per-user run directory and the names clusters and node daemons serve clients by.

Directory: ``$NETMESH_RUN_DIR``, else ``$XDG_RUNTIME_DIR/netmesh``, else
``/tmp/netmesh-<uid>``; created 0700 and refused when another user owns it or others
can enter it (a shared ``/tmp`` must not let another user plant sockets for us).

:func:`run_dir` is the one place the directory is defaulted: the client socket
lookup (``netmesh.connect``, ``publish``/``tail``), the servers (``netmesh up``,
``Cluster(name=)``, node daemons), the run locks of :mod:`netmesh.cluster.supervisor`
and the run files ``netmesh status`` reads all call it.

A served name ``N`` is ``N.sock`` (a Unix stream socket, mode 0600) next to ``N.lock``,
which the serving process holds with ``flock`` for as long as it serves: a second
server of the same name gets :class:`~netmesh.errors.NameTaken`; a socket whose lock
nobody holds belongs to a dead run and is replaced. Peers are checked with
``SO_PEERCRED``: only the same uid is served (like the socket's mode, and checked
again because a socket's mode is not a boundary on every system).

Lock files (:func:`take_lock`, :func:`release_lock`): every exit path that runs code
removes the lock file it created (unlinked while still locked, then closed); a
SIGKILLed holder leaves its file behind, with its pid inside and its ``flock`` gone,
and the next taker logs one line and takes it over. A taker that locked a file another
process unlinked meanwhile notices (the path names another inode, or none) and
retries, so two processes never both believe they hold one name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass

from netmesh.errors import ConfigError, NameTaken

log = logging.getLogger(__name__)

NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_UCRED = struct.Struct("3i")  # pid, uid, gid


def default_run_dir() -> str:
    """The run directory's path without touching the file system (module doc):
    ``$NETMESH_RUN_DIR``, else ``$XDG_RUNTIME_DIR/netmesh``, else ``/tmp/netmesh-<uid>``
    (the system temporary directory, ``tempfile.gettempdir()``). Read at each call, so
    a changed environment counts."""
    path = os.environ.get("NETMESH_RUN_DIR")
    if path:
        return path
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "netmesh")
    return os.path.join(tempfile.gettempdir(), f"netmesh-{os.getuid()}")


def run_dir(create: bool = True) -> str:
    """The run directory (see the module doc; :func:`default_run_dir`), created 0700
    when ``create``; ConfigError when it cannot be created or another user owns it."""
    path = default_run_dir()
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


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lock(path: str, what: str) -> int:
    """Create (mode 0600) and ``flock`` ``path`` exclusively; the fd, which holds the
    lock until :func:`release_lock`. Our pid is written into the file.

    Raises BlockingIOError (with ``holder``: the pid text in the file, or ``"?"``) when
    a live process holds it. A file left by a holder that died without cleaning up (a
    SIGKILL) is taken over with one log line naming its pid. ``what`` names the lock in
    that line (``"cluster name 'demo'"``). OSError when the file cannot be created."""
    for _attempt in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            err = BlockingIOError(f"{what} is locked by pid {holder}")
            err.holder = holder  # type: ignore[attr-defined]
            raise err from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder released (unlinked) it between our open and flock
            os.close(fd)
            continue
        try:
            previous = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if previous.isdigit() and int(previous) != os.getpid():
                alive = pid_alive(int(previous))
                state = "that pid is another process now" if alive else "not running"
                log.warning(
                    "%s: stale lock %s of pid %s (%s) taken over", what, path, previous, state
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise BlockingIOError(f"{what}: {path} keeps being replaced; giving up")


def release_lock(path: str, fd: int) -> None:
    """Remove ``path`` (if it still is the file ``fd`` locks) and close ``fd``: the
    unlink happens while the lock is held, so a taker that opened the old file notices
    (see :func:`take_lock`)."""
    if fd < 0:
        return
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(path).st_ino:
            os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)


@dataclass
class Claim:
    """A served name, held: the lock fd and (once :meth:`listen` ran) the listening
    socket. ``close()`` frees both and removes the socket and the lock file."""

    name: str
    path: str
    lock_path: str
    lock_fd: int
    listener: socket.socket | None = None

    def listen(self) -> socket.socket:
        """Bind and listen on the name's socket (mode 0600), replacing a dead run's
        socket file; the listener. OSError when it cannot be bound."""
        if self.listener is not None:
            return self.listener
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead run's socket: its lock was free
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)
            listener.listen(64)
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old)
        self.listener = listener
        return listener

    def close(self) -> None:
        if self.lock_fd < 0:
            return
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        # the lock file goes last, unlinked while held: the name is free after this
        release_lock(self.lock_path, self.lock_fd)
        self.lock_fd = -1


def claim(name: str, listen: bool = True) -> Claim:
    """Take ``name`` and (``listen``, default) listen on its socket; with
    ``listen=False`` only the name is held (call :meth:`Claim.listen` later: a node
    daemon holds its name before it opens channels, so a conflict is found first).
    Raises NameTaken when a live process serves it, ConfigError for a bad name or run
    directory."""
    check_name(name)
    d = run_dir()
    lock_path = os.path.join(d, f"{name}.lock")
    try:
        fd = take_lock(lock_path, f"name {name!r}")
    except BlockingIOError as exc:
        holder = getattr(exc, "holder", "?")
        raise NameTaken(
            f"a cluster or node daemon named {name!r} is already running (pid {holder})"
        ) from None
    c = Claim(name, os.path.join(d, f"{name}.sock"), lock_path, fd)
    if listen:
        try:
            c.listen()
        except BaseException:
            c.close()
            raise
    return c


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
