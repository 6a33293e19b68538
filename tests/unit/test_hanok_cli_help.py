"""Every `hanok` command documents itself: `--help` works and shows an example.

The issue asks for click's conventions on every command (help with examples,
completion, --json/--quiet on listings); this walks the real command tree, so
a new command without an example fails here.
"""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from hanok.cli import hanok_cli

HIDDEN_OK = {"container cleanup"}  # run by monitors, not by people


def walk(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, command in sorted(group.commands.items()):
        out.append((prefix + (name,), command))
        if isinstance(command, click.Group):
            out.extend(walk(command, prefix + (name,)))
    return out


COMMANDS = walk(hanok_cli())
LISTINGS = {("ps",), ("images",), ("network", "ls"), ("pod", "ls")}


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_has_an_example(path: tuple[str, ...], command: click.Command) -> None:
    done = CliRunner().invoke(hanok_cli(), [*path, "--help"], prog_name="hanok")
    assert done.exit_code == 0, done.output
    if " ".join(path) in HIDDEN_OK:
        assert command.hidden
        return
    assert "Example" in done.output, f"hanok {' '.join(path)} --help shows no example"


@pytest.mark.parametrize("path", sorted(LISTINGS), ids=[" ".join(p) for p in sorted(LISTINGS)])
def test_listings_have_json_and_quiet(path: tuple[str, ...]) -> None:
    command = dict(COMMANDS)[path]
    flags = {opt for param in command.params for opt in param.opts}
    assert {"--json", "-q"} <= flags


def test_completion_script_is_generated() -> None:
    done = CliRunner().invoke(hanok_cli(), [], prog_name="hanok", env={"_HANOK_COMPLETE": "bash_source"})
    assert done.exit_code == 0
    assert "_HANOK_COMPLETE=bash_complete" in done.output
