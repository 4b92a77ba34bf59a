"""`chorus demo`: a real round trip without Serve — Whisper transcribes a spoken sample, the LLM answers it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from modalities.llm.config import QUANTIZATIONS
from serve.cli.common import REPO_ROOT, add_command

DEFAULT_DEMO_AUDIO = REPO_ROOT / "samples" / "audio" / "where_is_my_order.wav"
DEFAULT_QUESTION = "How should I answer this caller?"
SYSTEM_PROMPT = "You are a friendly customer-service assistant. Answer briefly."


def add_parser(subparsers) -> None:
    demo = add_command(
        subparsers, "demo", "speech → transcript → LLM answer, without Serve", _cmd_demo,
        description="A command-line round trip without Serve: Whisper transcribes a spoken sample, then the LLM "
        "answers a question about it, streaming its tokens.",
    )
    demo.add_argument("--audio", default=str(DEFAULT_DEMO_AUDIO), help="wav/flac/ogg/mp3 file to transcribe")
    demo.add_argument("--question", default=DEFAULT_QUESTION, help="instruction for the LLM")
    demo.add_argument("--quantization", default="none", choices=list(QUANTIZATIONS), help="LLM weight quantization")
    demo.add_argument("--max-tokens", type=int, default=96, help="most tokens the LLM may answer with")


def _cmd_demo(args: argparse.Namespace) -> int:
    from modalities.audio.decode import SAMPLE_RATE, decode_audio
    from modalities.audio.whisper import WhisperConfig, WhisperRuntime
    from modalities.llm.runtime import LLMConfig, LLMRuntime

    audio_path = Path(args.audio)
    t0 = time.perf_counter()
    whisper_rt = WhisperRuntime.from_config(WhisperConfig())
    t1 = time.perf_counter()
    llm = LLMRuntime.from_config(LLMConfig(quantization=args.quantization))
    t2 = time.perf_counter()
    print(f"loaded Whisper in {t1 - t0:.1f} s, LLM ({args.quantization}) in {t2 - t1:.1f} s")

    audio = decode_audio(audio_path.read_bytes())
    t3 = time.perf_counter()
    transcript = whisper_rt.transcribe(audio)
    t4 = time.perf_counter()
    print(f"\n[{audio_path.name}, {len(audio) / SAMPLE_RATE:.1f} s of speech, transcribed in {t4 - t3:.2f} s]")
    print(f"caller: {transcript.text}")
    _answer(llm, args.question, transcript.text, args.max_tokens)
    return 0


def _answer(llm, question: str, transcript: str, max_tokens: int) -> None:
    """Stream the LLM's greedy answer to `question` about what the caller said, then its speed."""
    from modalities.llm.runtime import SamplingParams

    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{question}\n\nThe caller said: \"{transcript}\""},
    ]
    ids = llm.chat_template(messages)
    print("assistant: ", end="", flush=True)
    start = time.perf_counter()
    n_tokens = 0
    finish = None
    for event in llm.stream(input_ids=ids, params=SamplingParams(max_tokens=max_tokens, temperature=0.0)):
        print(event.text, end="", flush=True)
        n_tokens += 1
        finish = event.finish_reason or finish
    elapsed = time.perf_counter() - start
    print(f"\n\n[{n_tokens} tokens in {elapsed:.2f} s, {n_tokens / elapsed:.1f} tok/s, finish_reason={finish}]")
