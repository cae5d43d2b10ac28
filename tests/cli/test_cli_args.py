"""The ``netmesh`` command behaves like a Unix tool (issue 16 §3): --help everywhere
with defaults, one-line errors with exit 2 before anything starts. Subprocesses, no
cluster is started by any of these."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def netmesh(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "netmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "command",
    [[], ["demo"], ["up"], ["status"], ["bench"], ["bench", "peers"]],
    ids=["netmesh", "demo", "up", "status", "bench", "bench-peers"],
)
def test_every_command_answers_help_with_defaults_and_no_rst(command: list[str]) -> None:
    out = netmesh(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: netmesh") and out.stderr == ""
    assert "``" not in out.stdout
    if command:
        assert "(default:" in out.stdout


def test_up_help_names_every_option_the_readme_lists() -> None:
    text = netmesh("up", "--help").stdout
    for option in ("--nodes", "--factor", "--channel", "--payload", "--duration", "--heartbeat-ms"):
        assert option in text


def test_bare_bench_lists_what_it_can_run_and_starts_nothing() -> None:
    out = netmesh("bench", timeout=30)
    assert out.returncode == 0, out.stderr
    for suite in ("all", "ingest", "replicated", "failover", "catchup", "latency", "peers"):
        assert f"netmesh bench {suite}" in out.stdout


def test_plot_without_matplotlib_fails_before_running(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('matplotlib is not installed')\n")
    out_json = tmp_path / "figures.json"
    out = netmesh(
        "bench",
        "ingest",
        "--quick",
        "--json",
        str(out_json),
        "--plot",
        str(tmp_path / "p.png"),
        env={"PYTHONPATH": str(tmp_path / "site")},
        timeout=30,
    )
    assert out.returncode == 2
    assert "--plot needs matplotlib" in out.stderr and len(out.stderr.splitlines()) == 1
    assert not out_json.exists()  # nothing ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0"], "argument --nodes: must be >= 1, got 0"),
        (["--factor", "0"], "argument --factor: must be >= 1, got 0"),
        (["--nodes", "1", "--factor", "3"], "--factor 3 is larger than --nodes 1"),
        (["--channel", "bad name"], "channel name 'bad name'"),
        (["--data-dir", "/sys/netmesh-x"], "--data-dir '/sys/netmesh-x' cannot be created"),
        (["--payload", "2000000"], "--payload 2000000 exceeds the channel's max_payload"),
        (["--rate", "-5"], "argument --rate: must be >= 0, got -5"),
        (["--duration", "-1"], "argument --duration: must be >= 0"),
        (["--heartbeat-ms", "10"], "argument --heartbeat-ms: must be >= 50"),
        (["--nodes", "three"], "argument --nodes: 'three' is not a int"),
        (["--ack", "sometimes"], "invalid choice"),
    ],
)
def test_bad_up_arguments_give_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = netmesh("up", *args, env={"NETMESH_RUN_DIR": str(tmp_path)}, timeout=30)
    assert out.returncode == 2, out.stdout
    assert out.stderr.startswith("netmesh up: error: ") and message in out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert out.stdout == "" and os.listdir(tmp_path) == []  # no run file: nothing started


def test_status_without_a_run_says_where_it_looked(tmp_path: Path) -> None:
    out = netmesh("status", env={"NETMESH_RUN_DIR": str(tmp_path)})
    assert out.returncode == 1
    assert str(tmp_path) in out.stderr and "NETMESH_RUN_DIR" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    out = netmesh("status", "--run", "999999999", env={"NETMESH_RUN_DIR": str(tmp_path)})
    assert out.returncode == 1 and "pid 999999999" in out.stderr


def test_unknown_command_is_a_one_line_usage_error() -> None:
    out = netmesh("launch")
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert "invalid choice: 'launch'" in out.stderr


@pytest.mark.parametrize(
    ("raised", "code", "shown"),
    [
        (TimeoutError("timed out after 10.0s waiting for a leader"), 1, "TimeoutError: timed"),
        (OSError(28, "No space left on device"), 1, "No space left on device"),
        (RuntimeError("a bug"), 70, "internal error: RuntimeError: a bug"),
    ],
    ids=["timeout", "oserror", "bug"],
)
def test_an_unexpected_error_is_one_line_and_a_nonzero_exit(
    raised: BaseException,
    code: int,
    shown: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A new-user trial saw `netmesh demo` end in a TimeoutError traceback: errors that
    are not NetmeshErrors are one line too (NETMESH_DEBUG=1 re-raises a bug)."""
    from netmesh.cli import main as cli

    def boom(_args: object) -> int:
        raise raised

    monkeypatch.setattr(cli, "cmd_status", boom)
    monkeypatch.delenv("NETMESH_DEBUG", raising=False)
    assert cli.main(["status"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netmesh status: ") and shown in err
    if code == 70:
        monkeypatch.setenv("NETMESH_DEBUG", "1")
        with pytest.raises(RuntimeError):
            cli.main(["status"])
