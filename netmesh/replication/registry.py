"""Redex: the registry of a node's event files (channel name -> RedexFile).

Opening a name that is already open returns the same live handle; its replication
settings must match (otherwise ConfigError), other settings of the second call are
ignored. Replication is wired in by :meth:`Redex.enable_replication` (see
``netmesh.replication.runtime``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from netmesh.channel import ChannelName
from netmesh.config import RedexFileConfig
from netmesh.errors import ConfigError
from netmesh.log.file import RedexFile

if TYPE_CHECKING:
    from netmesh.replication.runtime import ReplicationHub


class Redex:
    """A node's set of open event files, optionally replicated over a MeshNode."""

    def __init__(self) -> None:
        self._files: dict[ChannelName, RedexFile] = {}
        self._hub: ReplicationHub | None = None

    def open_file(
        self, name: str | ChannelName, config: RedexFileConfig | None = None
    ) -> RedexFile:
        """Open (or return the already open) file ``name``.

        Raises ChannelNameError, ConfigError (bad config, replication without
        ``enable_replication``, reopen with different replication), LogCorrupt.
        """
        cname = ChannelName(name)
        cfg = config or RedexFileConfig()
        live = self._files.get(cname)
        if live is not None:
            if live.config.replication != cfg.replication:
                raise ConfigError(
                    f"{cname!r} is open with replication={live.config.replication!r};"
                    " reopen must use the same replication config"
                )
            return live
        cfg.validate()
        if cfg.replication is not None and self._hub is None:
            raise ConfigError("RedexFileConfig.replication requires Redex.enable_replication(node)")
        f = RedexFile(cname, cfg)
        if cfg.replication is not None and self._hub is not None:
            try:
                self._hub.attach(cname, f, cfg.replication)
            except BaseException:
                f.close()  # never leave an unreplicated, writable file registered
                raise
        self._files[cname] = f
        return f

    def get_file(self, name: str) -> RedexFile | None:
        return self._files.get(ChannelName(name))

    def open_files(self) -> list[RedexFile]:
        return list(self._files.values())

    def close_file(self, name: str) -> None:
        """Stop the channel's replication runtime and close the file; unknown: no-op."""
        cname = ChannelName(name)
        f = self._files.pop(cname, None)
        if f is None:
            return
        if self._hub is not None:
            self._hub.detach(cname)
        f.close()

    def close(self) -> None:
        for name in list(self._files):
            self.close_file(name)

    # -- replication -----------------------------------------------------------------
    def enable_replication(self, node: Any) -> None:
        """Route replication traffic of this Redex over ``node`` (a MeshNode). Idempotent."""
        if self._hub is not None:
            return
        from netmesh.replication.runtime import ReplicationHub

        self._hub = ReplicationHub(node)

    def replication_coordinator_for(self, name: str) -> Any:
        """The channel's coordinator handle, or None (not replicated / not open)."""
        if self._hub is None:
            return None
        return self._hub.coordinator_for(ChannelName(name))

    def replication_runtime(self, name: str) -> Any:
        """The channel's ChannelRuntime (replication shell), or None."""
        return None if self._hub is None else self._hub.runtime(ChannelName(name))

    def replication_runtime_count(self) -> int:
        return 0 if self._hub is None else self._hub.runtime_count()

    # -- helpers for node processes ---------------------------------------------------
    def append(self, name: str, payloads: list[bytes]) -> int:
        """Append to an open file (NotLeader on a replica); returns the first seq."""
        f = self.get_file(name)
        if f is None:
            raise ConfigError(f"channel {name!r} is not open")
        return f.append_batch(payloads)

    def commit_target(self, name: str, last_seq: int) -> int:
        """The commit_seq an append ending at ``last_seq`` must wait for, or -1 when the
        channel acknowledges on the leader alone."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None or rt.coord.config.ack != "quorum":
            return -1
        return last_seq + 1

    def is_committed(self, name: str, commit_target: int) -> bool | None:
        """See ChannelRuntime.is_committed; None for a channel that is not replicated."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        return None if rt is None else rt.is_committed(commit_target)

    def on_commit(self, name: str, commit_target: int, callback: Any) -> None:
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None:
            callback()
        else:
            rt.on_commit(commit_target, callback)

    def channel_metrics(self, name: str) -> dict[str, Any]:
        """Replication metrics of one channel as a plain dict ({} if not replicated)."""
        rt = self._hub.runtime(ChannelName(name)) if self._hub else None
        if rt is None:
            return {}
        m = rt.metrics()
        d = dict(m.__dict__)
        d.pop("extra", None)
        return d

    def replication_metrics_snapshot(self) -> Any:
        """Per-channel replication metrics, or None when replication is not enabled."""
        return None if self._hub is None else self._hub.metrics_snapshot()
