"""`lal COMMAND --help`: every option explained with its default, examples that survive 80 columns."""

from __future__ import annotations

import argparse

import pytest

from lal.cli import COMMAND_LINE, build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(subparsers.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help_and_shows_its_default(name):
    command = _commands()[name]
    assert command.description, f"`lal {name} --help` has no description"
    help_text = command.format_help()
    for action in command._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"lal {name} {action.option_strings}: no help text"
        if not action.required and action.nargs != 0:
            rendered = command._get_formatter()._expand_help(action)
            assert "default" in rendered, f"lal {name} {action.option_strings[0]}: the help does not show its default"
            assert rendered.split("(default")[0].strip() in " ".join(help_text.split())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_examples_fit_80_columns_and_break_only_before_a_flag(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    command = _commands()[name]
    lines = command.format_help().splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    rendered = iter(lines)
    for example in [line for line in (command.epilog or "").splitlines() if COMMAND_LINE.match(line)]:
        first = next(line for line in rendered if line.startswith(example[:20]))
        pieces = [first]
        while pieces[-1].endswith(" \\"):
            pieces[-1] = pieces[-1][:-2]
            following = next(rendered)
            assert following.startswith("    --"), following  # continued at a flag, never inside an argument
            pieces.append(following.strip())
        assert " ".join(pieces) == example
