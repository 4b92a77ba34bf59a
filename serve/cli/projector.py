"""`chorus train-projector`, `eval-projector`, `eval-agreement`, `compare-projectors`: train a projector
on a feature set (encoder and LLM frozen), measure it, and compare two measurements clip by clip (see
fusion.train, fusion.evaluate, fusion.agreement, fusion.paired)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modalities.paths import PACKAGED
from serve.cli.common import (
    add_command,
    add_device,
    add_report_flags,
    add_seed,
    add_threads,
    config_from_args,
    default_fusion_dir,
)
from serve.cli.data import SPEECH_SET, VISION_SET

MODALITIES = ("audio", "image")


def add_parser(subparsers) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_agreement(subparsers)
    _add_compare(subparsers)


def _add_train(subparsers) -> None:
    train = add_command(
        subparsers, "train-projector", "train an audio or image projector (encoder, LLM frozen)", _cmd_train_projector,
        description="Train a projector on a speech corpus or image set against the packaged LLM, encoder and LLM "
        "frozen; an interrupted run resumes from its --out directory.",
    )
    train.add_argument("--data", default=None, help=f"speech corpus or image set (default: ~/.cache/chorus/fusion/{SPEECH_SET})")
    train.add_argument("--modality", choices=list(MODALITIES), default=None, help="default: what --data holds")
    train.add_argument("--out", default=None, help="run directory (default: ~/.cache/chorus/fusion/runs/<modality>)")
    train.add_argument("--ship-to", default=None, help="also write the final fp16 projector to this directory")
    train.add_argument("--stack", type=int, default=4, help="Whisper frames per soft token (recorded in the checkpoint; the decoder reads it from there)")
    train.add_argument("--connector", choices=["stack", "whisper_decoder"], default="stack",
                       help="audio: stack{k}_swiglu (Ultravox) or Whisper's decoder with learned queries (DiVA)")
    train.add_argument("--connector-window", type=int, default=0,
                       help="whisper_decoder: frames each side of a query's own that it reads (0: the whole clip)")
    train.add_argument("--augment-features", dest="augment", action="store_true",
                       help="SpecAugment the cached encoder frames of training turns (speed, time/channel masks, noise; fusion.feature_augment)")
    train.add_argument("--steps", type=int, default=1000, help="optimizer steps in total (a resumed run continues the count)")
    train.add_argument("--batch-size", type=int, default=8, help="training turns per step")
    train.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate (linear warm-up, cosine decay)")
    train.add_argument("--distill", action="store_true", help="add KL to the LLM reading the transcript as text")
    train.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation KL")
    train.add_argument("--kl-temperature", type=float, default=1.0, help="softmax temperature of the KL (Ultravox: 2)")
    train.add_argument("--hidden-weight", type=float, default=0.0, help="DiVA: weight of the final-prompt hidden-state match (with --distill)")
    train.add_argument("--ce-weight", type=float, default=1.0, help="weight of cross-entropy on the target tokens")
    train.add_argument("--split-turns", action="store_true", help="KL/hidden on answer turns only, CE on repeat turns only")
    train.add_argument("--init-from", default=None, help="start from this projector checkpoint's weights")
    train.add_argument("--align-steps", type=int, default=0, help="CTC alignment steps before the LLM stage (fusion.align)")
    train.add_argument("--align-lr", type=float, default=2e-3, help="peak learning rate of the alignment stage")
    train.add_argument("--answer-share", type=float, default=0.0, help="share of training clips taught the LLM's own answer (the rest: repeat)")
    train.add_argument("--no-norm-match", action="store_true", help="skip scaling outputs to the embedding norm")
    train.add_argument("--eval-every", type=int, default=200, help="held-out loss every this many steps")
    train.add_argument("--checkpoint-every", type=int, default=50, help="save the train state (for resume) every this many steps")
    train.add_argument("--max-minutes", type=float, default=None, help="stop (checkpointed) after this long")
    add_threads(train, 2)
    add_device(train, "the LLM and projector")
    add_seed(train, "the projector's initial weights and the batch order")


def _add_eval(subparsers) -> None:
    ev = add_command(
        subparsers, "eval-projector", "measure a projector: audio WER, image captions", _cmd_eval_projector,
        description='Measure a projector checkpoint. Audio: "repeat" word error rate with the projector (embed), '
        "with Whisper's transcript, and untrained, then answer agreement (word F1 of the answers to the clip as the "
        "whole turn: embed, transcript and untrained vs the answer to the true text); image: caption cross-entropy and attribute accuracy, trained "
        "vs untrained.",
    )
    ev.add_argument("--checkpoint", required=True, help="projector checkpoint directory")
    ev.add_argument("--data", default=None, help=f"speech corpus / image set (default: {SPEECH_SET}; the image set it was trained on)")
    add_report_flags(ev, limit=40, unit="clips / images")
    ev.add_argument("--modes", default="embed,transcript,untrained", help="audio: comma-separated")
    ev.add_argument("--baseline", default=None, help="merge the modes of an earlier --report JSON (same clips)")
    ev.add_argument("--no-agreement", dest="agreement", action="store_false",
                    help="audio: skip the answer agreement (the eval-agreement figures, written beside the report)")
    add_threads(ev, 2)
    add_device(ev, "image projectors; the audio eval runs on CPU")


def _add_agreement(subparsers) -> None:
    agree = add_command(
        subparsers, "eval-agreement", "audio projector: embed vs transcript answers (word F1)", _cmd_eval_agreement,
        description='"Answer the request": how closely the LLM\'s answers to spoken requests match (word F1) when it '
        "hears them through the audio projector and when it reads Whisper's transcript.",
    )
    agree.add_argument("--checkpoint", default=PACKAGED,
                       help=f"audio projector checkpoint directory, or '{PACKAGED}'")
    agree.add_argument("--data", default=None, help=f"speech corpus (default: {SPEECH_SET} in the cache)")
    add_report_flags(agree, limit=20, unit="clips")
    add_threads(agree, 1)


def _add_compare(subparsers) -> None:
    compare = add_command(
        subparsers, "compare-projectors", "two eval reports clip by clip: difference and its bootstrap interval", _cmd_compare,
        description="Compare two eval-projector reports of one task measured on the same clips (repeat WER, or the "
        "answer agreement's word F1): per split, the difference, its paired-bootstrap 95 % interval and the clips "
        "each one does better on.",
    )
    compare.add_argument("first", help="report JSON (eval-projector --report, or its .agreement.json)")
    compare.add_argument("second", help="report JSON of the same task and clips")
    compare.add_argument("--key", default=None,
                         help="repeat: the mode (default embed); answer: the pair (default embed_vs_reference)")
    compare.add_argument("--report", default=None, help="also write the comparison as JSON here")


def _modality(args: argparse.Namespace) -> str:
    """--modality, else what the --data directory holds (an image set or a speech corpus)."""
    from fusion.vision_data import is_vision_data

    if args.modality:
        return args.modality
    return "image" if args.data and is_vision_data(args.data) else "audio"


def _invocation() -> str:
    """The command line as typed, for the checkpoint's record of how it was trained."""
    return "chorus " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("chorus") else " ".join(sys.argv)


def _cmd_train_projector(args: argparse.Namespace) -> int:
    from fusion.feature_augment import FeatureAugment
    from fusion.train import TrainConfig, train_projector_cli

    modality = _modality(args)
    data = args.data or default_fusion_dir(VISION_SET if modality == "image" else SPEECH_SET)
    out = args.out or default_fusion_dir(f"runs/{modality}")
    config = config_from_args(
        TrainConfig, args, data_dir=data, out_dir=out, modality=modality, match_embedding_norm=not args.no_norm_match,
        augment_features=FeatureAugment() if args.augment else None,
    )
    train_projector_cli(config, command=_invocation(), ship_to=args.ship_to)
    return 0


def _cmd_eval_projector(args: argparse.Namespace) -> int:
    from fusion.checkpoint import read_metadata
    from fusion.evaluate import evaluate_cli, evaluate_vision_cli

    if read_metadata(args.checkpoint).get("modality") == "image":
        data = args.data or read_metadata(args.checkpoint)["data"]["config"]["out_dir"]
        evaluate_vision_cli(args.checkpoint, data, args.limit, args.write_metadata, args.threads, args.report, args.device)
        return 0
    data = args.data or default_fusion_dir(SPEECH_SET)
    evaluate_cli(
        checkpoint=args.checkpoint,
        data_dir=data,
        limit=args.limit,
        modes=args.modes.split(","),
        write_metadata=args.write_metadata,
        threads=args.threads,
        report=args.report,
        baseline=args.baseline,
    )
    if args.agreement:
        from fusion.agreement import evaluate_agreement_cli

        report = str(Path(args.report).with_suffix(".agreement.json")) if args.report else None
        evaluate_agreement_cli(args.checkpoint, data, args.limit, args.threads, report, args.write_metadata)
    return 0


def _cmd_eval_agreement(args: argparse.Namespace) -> int:
    from fusion.agreement import evaluate_agreement_cli
    from fusion.checkpoint import PACKAGED_AUDIO_PROJECTOR

    checkpoint = str(PACKAGED_AUDIO_PROJECTOR) if args.checkpoint == PACKAGED else args.checkpoint
    data = args.data or default_fusion_dir(SPEECH_SET)
    evaluate_agreement_cli(checkpoint, data, args.limit, args.threads, args.report, args.write_metadata)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fusion.paired import compare_cli

    try:
        compare_cli(args.first, args.second, args.key, args.report)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"chorus compare-projectors: {e}", file=sys.stderr)
        return 2
    return 0
