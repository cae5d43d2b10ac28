"""``netmesh keygen / psk / node`` commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = Callable[[str, str], argparse.ArgumentParser]


def register(command: Command) -> None:
    """Add this module's subcommands (``command(name, help)`` makes a subparser)."""
