"""The `chorus` command line as a whole: every command and flag explains itself, `chorus --help`
imports no model code, and the arguments reach the commands unchanged."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from serve.cli import build_parser, main
from serve.cli.common import config_from_args
from serve.cli.data import SPEECH_SET

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = (
    "models", "demo", "serve", "explain", "make-speech-data", "make-vision-data", "train-projector", "eval-projector",
    "eval-agreement", "compare-projectors", "bench",
)


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("chorus",)):
    """(command path, parser) for the top-level parser and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_flag_has_help():
    missing = []
    for path, parser in _parsers(build_parser()):
        assert parser.description, f"{' '.join(path)} has no description"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {sub.dest}" for sub in action._choices_actions if not (sub.help or "").strip()]
    assert not missing, f"no help text: {missing}"


def test_every_command_is_there():
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(top.choices) == COMMANDS


@pytest.mark.parametrize("command", ["", *COMMANDS, "models prepare"])
def test_help_shows_defaults_and_imports_no_model_code(command):
    """In a fresh interpreter: each `--help` exits 0, and nothing heavy has been imported by then."""
    script = (
        "import sys\n"
        "from serve.cli import main\n"
        "try:\n"
        f"    main({[*command.split(), '--help']!r})\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = sorted(m for m in ('torch', 'ray', 'transformers', 'whisper', 'open_clip', 'fastapi') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: chorus" in result.stdout


def test_defaults_are_shown_once():
    train = dict(_parsers(build_parser()))[("chorus", "train-projector")].format_help()
    flat = " ".join(train.split())
    assert "(default: 1000)" in flat  # --steps: argparse's default, shown
    assert "(default: None)" not in flat and "(default: False)" not in flat  # nothing to show: not shown
    said = f"(default: ~/.cache/chorus/fusion/{SPEECH_SET})"
    assert said in flat and f"{SPEECH_SET}) (default" not in flat  # said once


def test_arguments_reach_the_command(monkeypatch):
    seen: list[argparse.Namespace] = []

    def fake_serve(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr("serve.cli.serve_cmd._cmd_serve", fake_serve)  # before main() builds the parser
    assert main(["serve", "--config", "deploy/other.yaml"]) == 0
    assert [args.config for args in seen] == ["deploy/other.yaml"]
    args = build_parser().parse_args(["models", "prepare", "--only", "llm"])
    assert (args.command, args.models_command, args.only, args.force) == ("models", "prepare", "llm", False)
    args = build_parser().parse_args(["train-projector", "--steps", "3", "--distill"])
    assert (args.steps, args.distill, args.batch_size, args.threads, args.device) == (3, True, 8, 2, "cpu")


def test_fusion_flags_reach_their_configs():
    """The speech-corpus and training flags name their config fields: `config_from_args` carries them."""
    from fusion.speech_data import SpeechDataConfig
    from fusion.train import TrainConfig

    assert SPEECH_SET == "speech-v3"  # corpus v2 (fusion.speech_data.DATA_VERSION 2) in a directory of its own
    flags = ["make-speech-data", "--eval-clips", "7", "--answer-max-tokens", "9", "--answer-sentences", "0"]
    args = build_parser().parse_args(flags)
    data = config_from_args(SpeechDataConfig, args, out_dir=args.out)
    assert (data.eval_clips, data.answer_max_tokens, data.answer_sentences) == (7, 9, 0)
    assert data.out_dir.endswith(SPEECH_SET)
    defaults = config_from_args(SpeechDataConfig, build_parser().parse_args(["make-speech-data"]), out_dir="x")
    assert defaults.model_dump(exclude={"out_dir"}) == SpeechDataConfig(out_dir="x").model_dump(exclude={"out_dir"})

    flags = "train-projector --distill --distill-weight 0.5 --kl-temperature 2 --hidden-weight 0.25 --ce-weight 0.1"
    flags += " --align-steps 40 --align-lr 0.004 --answer-share 0.3"
    paths = {"data_dir": "d", "out_dir": "o", "modality": "audio"}  # what the command adds
    train = config_from_args(TrainConfig, build_parser().parse_args(flags.split()), **paths)
    assert (train.distill, train.distill_weight, train.kl_temperature, train.hidden_weight) == (True, 0.5, 2.0, 0.25)
    assert (train.ce_weight, train.align_steps, train.align_lr, train.answer_share) == (0.1, 40, 0.004, 0.3)
    plain = config_from_args(TrainConfig, build_parser().parse_args(["train-projector"]), **paths)
    assert plain.model_dump() == TrainConfig(**paths).model_dump()  # the flags' defaults are the config's
    assert build_parser().parse_args(["train-projector", "--augment-features"]).augment is True
    args = build_parser().parse_args(["eval-projector", "--checkpoint", "c", "--no-agreement"])
    assert (args.checkpoint, args.agreement) == ("c", False)
