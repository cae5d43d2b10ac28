"""ChannelName validation."""

from __future__ import annotations

import pytest

from netmesh.channel import ChannelName
from netmesh.errors import ChannelNameError


@pytest.mark.parametrize("name", ["orders", "repl/e2e", "A.b_c-d/x9", "a" * 255, "v1/2/3"])
def test_valid_names(name: str) -> None:
    assert ChannelName(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 256, "limit is 255"),
        ("/lead", "empty segment"),
        ("trail/", "empty segment"),
        ("a//b", "empty segment"),
        ("sp ace", "' '"),
        ("é", "'é'"),
        ("a/../b", "'..' segment"),
        ("./a", "'.' segment"),
    ],
)
def test_invalid_names_say_why(name: str, reason: str) -> None:
    with pytest.raises(ChannelNameError, match=reason.replace(".", r"\.")):
        ChannelName(name)


def test_non_string_rejected() -> None:
    with pytest.raises(ChannelNameError):
        ChannelName(b"bytes")  # type: ignore[arg-type]
