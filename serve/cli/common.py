"""What the command groups share: the help layout, paths, and flags that several commands take.

Nothing here imports torch, ray or a model runtime: `chorus --help` builds every parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

HELP_COLUMN = 30  # wide enough for the longest command name (make-speech-data) and most flags
Command = Callable[[argparse.Namespace], int]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default after its help, unless there is nothing to show (no value, a
    switch that is off) or the help already says what the default is."""

    def __init__(self, prog: str, max_help_position: int = HELP_COLUMN, **kwargs: Any) -> None:
        super().__init__(prog, max_help_position=max_help_position, **kwargs)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        # argparse measures a command's name without the indent it is listed at, so that the
        # longest names wrapped onto lines of their own.
        for subaction in self._iter_indented_subactions(action):
            width = len(self._format_action_invocation(subaction)) + self._current_indent
            self._action_max_length = max(self._action_max_length, width)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def add_command(
    subparsers, name: str, help: str, func: Command | None = None, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand listed with `help`, whose own `--help` opens with `description` (default: `help`)
    and shows defaults; `func` runs it."""
    parser = subparsers.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def default_fusion_dir(name: str) -> str:
    """`<cache>/fusion/<name>`: where data sets and training runs go unless told otherwise."""
    from modalities.paths import cache_dir

    return str(cache_dir() / "fusion" / name)


def config_from_args(cls, args: argparse.Namespace, **explicit):
    """A pydantic config from the command-line options named like its fields, plus `explicit` ones."""
    values = {name: getattr(args, name) for name in cls.model_fields if hasattr(args, name)}
    return cls(**{**values, **explicit})


def add_threads(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--threads", type=int, default=default, help="torch CPU threads")


def add_device(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--device", default="cpu", help=f"torch device for {what} (e.g. cuda)")


def add_seed(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"random seed for {what}")


def add_report_flags(parser: argparse.ArgumentParser, limit: int, unit: str) -> None:
    """The flags every evaluation takes: how much to evaluate and where the figures go."""
    parser.add_argument("--limit", type=int, default=limit, help=f"{unit} per eval split")
    parser.add_argument("--write-metadata", action="store_true", help="record the figures in the checkpoint metadata")
    parser.add_argument("--report", default=None, help="also write the figures (and samples) to this JSON file")
