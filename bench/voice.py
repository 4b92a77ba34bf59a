"""Voice: speech out, its round trip through Whisper, and the live channel's latency and barge-in.

1. TTS round trip: held-out sentences → `/v1/audio/speech` (wav) → `/v1/audio/transcriptions` → WER
   (fusion.evaluate's normaliser). 2. Synthesis speed: real-time factor of the engine in this process
   and of the whole HTTP request, alternating per sentence; a 3-sentence pcm stream's first byte.
3. Realtime latency: fresh `/v1/realtime` sockets, server VAD, questions spoken by hibari and sent
   paced in real time (20 ms chunks: a caller speaking live); from the last chunk of speech sent to the
   first `response.output_audio.delta`, in stages from `response.done`'s `chorus.timings`, each beside
   a reference (Whisper over HTTP, hibari in this process). 4. Barge-in: new paced speech once a long
   answer's first audio arrives: audio of the cancelled response after `speech_started`, VAD onset.
Run: `.venv/bin/python -m bench.voice` (starts deploy/local.yaml here) or `--url http://127.0.0.1:8000`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "voice" / "voice.json"
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
RATE = 24_000  # /v1/audio/speech and /v1/realtime PCM: 24 kHz mono s16le
CHUNK_S = 0.02  # a live caller's microphone: 20 ms per append
CHUNK_BYTES = int(RATE * CHUNK_S) * 2
WAV_HEADER = 44  # the streamed wav's header (sizes are the streaming placeholder)
REQUEST_TIMEOUT_S = 120
RECV_TIMEOUT_S = 60  # every socket read
DITHER_LSB = 2.0  # a microphone's noise floor (~-84 dBFS) on all audio sent: the AudioEncoder caches
# transcripts by the audio's bytes, so identical turns (in a run or across runs) would skip Whisper
RUN_SEED = time.time_ns()
TURN_TIMEOUT_S = 90
TARGETS = {"wer": 0.05, "wer_bar": 0.10, "rtf": 5.0, "latency_bar_s": 1.5, "latency_goal_s": 0.8, "barge_leak_s": 0.3}
VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}

# Held out: written for this bench, in no other file of the repo. No digits and no number words.
SENTENCES = [
    "Thank you for calling, how can I help you today?", "I am sorry to hear that your parcel has not arrived yet.",
    "Your refund has been approved and should reach your account within a week.", "Could you please confirm the email address on your account?",
    "I have sent a link to reset your password by email.", "The courier will collect the package from your door tomorrow morning.",
    "We do not charge a fee for changing your delivery address.", "Please keep the receipt until the replacement arrives.",
    "Is there anything else I can help you with?", "Your appointment has been moved to Thursday afternoon.",
    "I understand your frustration, and I will pass this on to my manager.", "The warranty covers repairs but not accidental damage.",
    "You can track your order from the link in the confirmation message.", "Please hold while I check the status of your request.",
    "Your subscription will renew automatically unless you turn it off.", "The weather turned cold after the long summer.",
    "She planted tomatoes and herbs in the garden behind the house.", "The library is quiet in the morning and busy after lunch.",
    "A gentle breeze moved the curtains by the open window.", "He forgot his umbrella on the train and got soaked walking home.",
    "The museum has a new exhibition about ancient maps.", "Fresh bread smells wonderful when it comes out of the oven.",
    "The children made a small boat from paper and sticks.", "Our team will call you back as soon as the parts are in stock.",
]
# Spoken by hibari (voice alloy → heart), alternated over the realtime turns. One sentence each:
# hibari pads every sentence with ~0.3 s of silence before and ~0.5 s after, so two sentences have a
# ~0.8 s pause between them, which a 500 ms silence_duration rightly takes for the end of a turn.
QUESTIONS = [
    "Hello, my package was supposed to arrive yesterday but it is still missing, what should I do?",
    "Can you tell me how to update the payment card on my account?", "What are your opening hours at the weekend?",
    "I received a jacket in the wrong size, how do I exchange it?",
]
SHORT = "Answer in one short sentence."
LONG_QUESTION = "Can you explain in detail how your return policy works for electronics and for clothing?"
LONG = "Give a detailed answer of several sentences, step by step."
BARGE = "Sorry, wait, I have a different question."


def spoken_pcm(audio: np.ndarray, floor: float = 0.01) -> bytes:
    """The clip from its first to its last sample above `floor` (~-40 dBFS), as s16le: so that the first
    and the last chunk sent are speech, and "end of speech" is when the last chunk leaves."""
    loud = np.flatnonzero(np.abs(audio) > floor)
    audio = audio[loud[0] : loud[-1] + 1] if loud.size else audio
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return b"\0" * (int(RATE * seconds) * 2)


def dithered(pcm: bytes, rng: np.random.Generator) -> bytes:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) + rng.normal(0.0, DITHER_LSB, len(pcm) // 2)
    return np.clip(np.round(samples), -32768, 32767).astype("<i2").tobytes()


def wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.frombuffer(pcm, dtype="<i2"), RATE, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _speech(client: httpx.Client, base: str, text: str, fmt: str) -> tuple[bytes, float, float]:
    """(body, time to first byte, time of the whole request) for one `/v1/audio/speech`."""
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": fmt}
    started = time.perf_counter()
    first, parts = None, []
    with client.stream("POST", f"{base}/v1/audio/speech", json=body) as reply:
        reply.raise_for_status()
        for part in reply.iter_raw():
            if part and first is None:
                first = time.perf_counter() - started
            parts.append(part)
    return b"".join(parts), first or 0.0, time.perf_counter() - started


def _transcribe(client: httpx.Client, base: str, wav: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    reply = client.post(f"{base}/v1/audio/transcriptions", files={"file": ("speech.wav", wav, "audio/wav")}, data={"model": "whisper-1"})
    reply.raise_for_status()
    return reply.json()["text"], time.perf_counter() - started


def _timed_synthesis(synth: Any, text: str) -> tuple[float, float]:
    """(audio s, synthesis s) of the engine in this process."""
    started = time.perf_counter()
    audio = synth.synthesize(text, "alloy")
    return len(audio) / RATE, time.perf_counter() - started


def round_trip(base: str, synth: Any) -> dict[str, Any]:
    from fusion.evaluate import word_errors

    client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
    _speech(client, base, "Warming up the voice.", "wav")  # the Speech replica's first synthesis loads hibari
    rows = []
    for i, text in enumerate(SENTENCES):
        if i % 2:  # alternate which path goes first, so that load drift hits both alike
            body, _, http_s = _speech(client, base, text, "wav")
        engine_audio_s, engine_s = _timed_synthesis(synth, text)
        if not i % 2:
            body, _, http_s = _speech(client, base, text, "wav")
        heard, whisper_s = _transcribe(client, base, body)
        errors, words = word_errors(text, heard)
        audio_s = (len(body) - WAV_HEADER) / (2 * RATE)
        rows.append({"text": text, "heard": heard, "errors": errors, "words": words, "audio_s": round(audio_s, 3),
                     "http_s": round(http_s, 4), "rtf_http": round(audio_s / http_s, 1), "engine_audio_s": round(engine_audio_s, 3),
                     "engine_s": round(engine_s, 4), "rtf_engine": round(engine_audio_s / engine_s, 1), "whisper_s": round(whisper_s, 3)})
    errors, words = sum(r["errors"] for r in rows), sum(r["words"] for r in rows)
    audio_http, audio_engine = sum(r["audio_s"] for r in rows), sum(r["engine_audio_s"] for r in rows)
    return {
        "sentences": rows, "wer": round(errors / words, 4), "errors": errors, "words": words,
        "misses": [{"text": r["text"], "heard": r["heard"], "errors": r["errors"]} for r in rows if r["errors"]],
        "rtf_engine_total": round(audio_engine / sum(r["engine_s"] for r in rows), 1), "rtf_engine_median": statistics.median(r["rtf_engine"] for r in rows),
        "rtf_http_total": round(audio_http / sum(r["http_s"] for r in rows), 1), "rtf_http_median": statistics.median(r["rtf_http"] for r in rows),
    }


def first_byte(base: str, synth: Any, repeats: int = 5) -> dict[str, Any]:
    """A 3-sentence pcm stream's first byte vs the whole; reference: the engine's first sentence vs the whole."""
    client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
    rows = []
    for i in range(repeats):
        text = " ".join(SENTENCES[3 * i : 3 * i + 3])
        pcm, ttfb, total = _speech(client, base, text, "pcm")
        started, chunks = time.perf_counter(), synth.stream(text, "alloy")
        next(chunks)
        engine_first = time.perf_counter() - started
        list(chunks)
        engine_total = time.perf_counter() - started
        rows.append({"text": text, "audio_s": round(len(pcm) / (2 * RATE), 3), "ttfb_s": round(ttfb, 4), "total_s": round(total, 4),
                     "engine_first_sentence_s": round(engine_first, 4), "engine_total_s": round(engine_total, 4)})
    med = {k: statistics.median(r[k] for r in rows) for k in ("ttfb_s", "total_s", "engine_first_sentence_s", "engine_total_s")}
    return {"requests": rows, **{f"{k}_median": round(v, 4) for k, v in med.items()},
            "ttfb_to_total": round(med["ttfb_s"] / med["total_s"], 3),
            "engine_first_to_total": round(med["engine_first_sentence_s"] / med["engine_total_s"], 3)}


class Listener:
    """Every server event of a socket, read in a task, with its arrival time; audio deltas as their size."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.log = ws, []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), RECV_TIMEOUT_S)
            at, event = time.perf_counter(), json.loads(raw)
            if event.get("type") == "response.output_audio.delta":
                pcm = np.frombuffer(base64.b64decode(event.pop("delta")), dtype="<i2")
                loud = np.flatnonzero(np.abs(pcm) > 328)  # its first sample over -40 dBFS
                event["bytes"], event["loud_at"] = pcm.nbytes, int(loud[0]) if loud.size else None
            self.log.append((at, event))

    def first(self, pred: Callable[[dict], bool], after: float = 0.0) -> tuple[float, dict] | None:
        return next(((t, e) for t, e in self.log if t >= after and pred(e)), None)

    def all(self, pred: Callable[[dict], bool]) -> list[tuple[float, dict]]:
        return [(t, e) for t, e in self.log if pred(e)]

    def check(self) -> None:
        if self.task.done() and (err := self.task.exception()):
            raise RuntimeError(f"the realtime socket stopped: {type(err).__name__}: {err}") from err


def _audible_after_s(deltas: list[tuple[float, dict]]) -> float | None:
    """Audio time from the start of the first delta to its first audible sample (played as it comes)."""
    samples = 0
    for _, event in deltas:
        if event["loud_at"] is not None:
            return (samples + event["loud_at"]) / RATE
        samples += event["bytes"] // 2
    return None


def kind(name: str) -> Callable[[dict], bool]:
    return lambda e: e.get("type") == name


class Pacer:
    """Sends audio in 20 ms appends on the audio clock: chunk k leaves at start + k * 20 ms."""

    def __init__(self, ws: Any, listener: Listener, rng: np.random.Generator) -> None:
        self.ws, self.listener, self.rng = ws, listener, rng
        self.start, self.sent, self.max_lag_s = time.perf_counter(), 0, 0.0

    async def _chunk(self, pcm: bytes) -> float:
        delay = self.start + self.sent * CHUNK_S - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        self.max_lag_s = max(self.max_lag_s, -delay)
        audio = base64.b64encode(dithered(pcm, self.rng)).decode()
        await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        self.sent += 1
        self.listener.check()
        return time.perf_counter()

    async def send(self, pcm: bytes) -> tuple[float, float, int]:
        """(first chunk sent, last chunk sent, audio ms of the session where `pcm` starts)."""
        at_ms = round(self.sent * CHUNK_S * 1000)
        times = [await self._chunk(pcm[i : i + CHUNK_BYTES]) for i in range(0, len(pcm), CHUNK_BYTES)]
        return times[0], times[-1], at_ms

    async def silence_until(self, done: Callable[[], bool], limit_s: float) -> None:
        deadline = time.perf_counter() + limit_s
        while not done():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no answer within {limit_s:g} s; events: {[e['type'] for _, e in self.listener.log][-12:]}")
            await self._chunk(silence(CHUNK_S))


async def _open(url: str, session: dict[str, Any]) -> Any:
    ws = await connect(url, max_size=2**24, open_timeout=30)
    created = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S))
    assert created["type"] == "session.created", created
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    while (event := json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)))["type"] != "session.updated":
        if event["type"] == "error":
            raise RuntimeError(f"session.update refused: {event['error']}")
    return ws


def _session(instructions: str, max_tokens: int) -> dict[str, Any]:
    return {"instructions": instructions, "max_output_tokens": max_tokens, "output_modalities": ["audio"],
            "audio": {"input": {"turn_detection": VAD, "transcription": {"model": "whisper-1"}}, "output": {"voice": "alloy"}}}


async def latency_turn(url: str, question: str, clip: bytes, seed: int) -> dict[str, Any]:
    ws = await _open(url, _session(SHORT, 60))
    listener = Listener(ws)
    try:
        pacer = Pacer(ws, listener, np.random.default_rng([RUN_SEED, seed]))
        await pacer.send(silence(0.5))
        _, end, clip_ms = await pacer.send(clip)
        await pacer.silence_until(lambda: listener.first(kind("response.done")) is not None, TURN_TIMEOUT_S)
    finally:
        listener.task.cancel()
        await ws.close()
    stopped, deltas = listener.first(kind("input_audio_buffer.speech_stopped")), listener.all(kind("response.output_audio.delta"))
    done = listener.first(kind("response.done"))[1]["response"]
    heard = listener.first(kind("conversation.item.input_audio_transcription.completed"))
    timings, created = dict(done["chorus"]["timings"]), listener.first(kind("response.created"))
    total, vad = (deltas[0][0] - end if deltas else None), (stopped[0] - end if stopped else None)
    texts = [t for t, _ in listener.all(kind("response.output_audio_transcript.delta")) if deltas and t <= deltas[0][0]]
    flushed = "first_sentence_s" not in timings and bool(texts) and created is not None
    if flushed:  # the service records no first_sentence_s when the answer's only sentence goes out at flush:
        timings["first_sentence_s"] = texts[-1] - created[0]  # the last text before the audio, on the client's clock
    row = {
        "question": question, "heard": heard[1]["transcript"] if heard else None, "status": done["status"],
        "answer": " ".join(p.get("transcript") or "" for o in done["output"] for p in o.get("content") or []),
        "answer_audio_s": round(sum(e["bytes"] for _, e in deltas) / (2 * RATE), 2),
        "speech_started_events": len(listener.all(kind("input_audio_buffer.speech_started"))),
        # where Silero put the end of speech, against the clip's end on the audio clock (ms)
        "vad_end_vs_clip_end_ms": stopped[1]["audio_end_ms"] - clip_ms - len(clip) // 48 if stopped else None, "latency_s": total, "answer_leading_silence_s": _audible_after_s(deltas), "timings": timings, "first_sentence_at_flush": flushed, "send_max_lag_s": round(pacer.max_lag_s, 4),
    }
    if total is not None and vad is not None and "first_audio_s" in timings:
        t = timings
        row["stages_s"] = {
            "vad": vad, "whisper": t["context_ready_s"], "decoder_first_token": t["first_token_s"] - t["context_ready_s"],
            "first_sentence": t["first_sentence_s"] - t["first_token_s"], "tts_first_sentence": t["first_audio_s"] - t["first_sentence_s"],
            "network_rest": total - vad - t["first_audio_s"],
        }
    return row


async def barge_trial(url: str, clip: bytes, barge: bytes, seed: int) -> dict[str, Any]:
    ws = await _open(url, _session(LONG, 200))
    listener = Listener(ws)
    try:
        pacer = Pacer(ws, listener, np.random.default_rng([RUN_SEED, seed]))
        await pacer.send(silence(0.5))
        await pacer.send(clip)
        await pacer.silence_until(lambda: listener.first(kind("response.output_audio.delta")) is not None, TURN_TIMEOUT_S)
        first_id = listener.first(kind("response.created"))[1]["response"]["id"]
        barge_at, _, barge_ms = await pacer.send(barge)

        def settled() -> bool:
            return (listener.first(lambda e: e.get("type") == "response.done" and e["response"]["id"] == first_id) is not None
                    and listener.first(kind("input_audio_buffer.speech_started"), after=barge_at) is not None)

        await pacer.silence_until(settled, TURN_TIMEOUT_S)
        await asyncio.sleep(0.3)  # anything of the cancelled response that still comes after its done
    finally:
        listener.task.cancel()
        await ws.close()
    started = listener.first(kind("input_audio_buffer.speech_started"), after=barge_at)
    done_at, done = listener.first(lambda e: e.get("type") == "response.done" and e["response"]["id"] == first_id)
    deltas = listener.all(lambda e: e.get("type") == "response.output_audio.delta" and e["response_id"] == first_id)
    after = [(t, e) for t, e in deltas if t > started[0]]
    details = done["response"]["status_details"] or {}
    return {
        "status": done["response"]["status"], "reason": details.get("reason"), "vad_onset_s": round(started[0] - barge_at, 4),
        "detected_at_audio_ms": started[1]["audio_start_ms"] + VAD["prefix_padding_ms"] - barge_ms,
        "last_delta_after_speech_started_s": round(max(0.0, deltas[-1][0] - started[0]), 4),
        "raw_last_delta_minus_speech_started_s": round(deltas[-1][0] - started[0], 4),
        "deltas_after_speech_started": len(after), "audio_after_speech_started_s": round(sum(e["bytes"] for _, e in after) / (2 * RATE), 3),
        "deltas_after_done": sum(1 for t, _ in deltas if t > done_at), "audio_before_barge_s": round(sum(e["bytes"] for t, e in deltas if t <= barge_at) / (2 * RATE), 3),
        "done_after_speech_started_s": round(done_at - started[0], 4), "timings": done["response"]["chorus"]["timings"],
    }


async def reference_turn(base: str, synth: Any, url: str, question: str, clip: bytes, i: int) -> dict[str, Any]:
    """A realtime turn and, beside it (before on odd turns, after on even), its references: Whisper over
    HTTP on the same clip (its own dither, ~what the turn commits) and hibari in this process on the
    answer's first sentence."""
    from modalities.speech.sentences import split_sentences

    rng = np.random.default_rng([RUN_SEED, 2000 + i])
    turn_wav = wav(dithered(silence(VAD["prefix_padding_ms"] / 1000) + clip, rng))
    client = httpx.Client(timeout=REQUEST_TIMEOUT_S)
    whisper_http_s = _transcribe(client, base, turn_wav)[1] if i % 2 else None
    row = await latency_turn(url, question, clip, i)
    if whisper_http_s is None:
        whisper_http_s = _transcribe(client, base, turn_wav)[1]
    first = next(iter(split_sentences(row["answer"])), "") or "."
    row["reference"] = {"whisper_http_s": round(whisper_http_s, 4), "first_sentence": first, "first_sentence_words": len(first.split()),
                        "tts_engine_first_sentence_s": round(_timed_synthesis(synth, first)[1], 4)}
    return row


async def realtime(base: str, synth: Any, turns: int, trials: int) -> tuple[dict[str, Any], dict[str, Any]]:
    url = base.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime?model=chorus"
    clips = {q: spoken_pcm(synth.synthesize(q, "alloy")) for q in [*QUESTIONS, LONG_QUESTION, BARGE]}
    warm = await latency_turn(url, QUESTIONS[0], clips[QUESTIONS[0]], 1000)  # first VAD, Whisper and TTS calls
    rows = [await reference_turn(base, synth, url, QUESTIONS[i % len(QUESTIONS)], clips[QUESTIONS[i % len(QUESTIONS)]], i) for i in range(turns)]
    ok = [r for r in rows if "stages_s" in r and r["latency_s"] > 0]
    if not ok:
        raise RuntimeError(f"no realtime turn gave a first audio delta after the end of speech: {rows}")
    totals = [r["latency_s"] for r in ok]
    median = statistics.median(totals)
    stages = {k: statistics.median(r["stages_s"][k] for r in ok) for k in ok[0]["stages_s"]}
    latency = {
        "voice_source": "hibari in-process (Synthesizer(SpeechConfig()).synthesize(text, 'alloy')), trimmed at -40 dBFS, s16le 24 kHz",
        "session": _session(SHORT, 60), "warm_up_turn": warm, "turns": rows,
        "clip_s": {q: round(len(clips[q]) / (2 * RATE), 2) for q in QUESTIONS},
        "usable_turns": len(ok), "median_s": round(median, 4), "p90_s": round(p90(totals), 4),
        "stage_median_s": {k: round(v, 4) for k, v in stages.items()},
        "stage_share_of_median": {k: round(v / median, 3) for k, v in stages.items()},
        "dominant_stage": max(stages, key=stages.get),
    }
    ref = {"whisper_http": statistics.median(r["reference"]["whisper_http_s"] for r in ok),
           "tts_engine_first_sentence": statistics.median(r["reference"]["tts_engine_first_sentence_s"] for r in ok),
           "answer_leading_silence": statistics.median(r["answer_leading_silence_s"] or 0.0 for r in ok)}
    audible = [r["latency_s"] + (r["answer_leading_silence_s"] or 0.0) for r in ok]
    latency.update({"reference_median_s": {k: round(v, 4) for k, v in ref.items()},
                    "whisper_realtime_to_http": round(stages["whisper"] / ref["whisper_http"], 2),
                    "tts_realtime_to_engine": round(stages["tts_first_sentence"] / ref["tts_engine_first_sentence"], 2),
                    "audible_median_s": round(statistics.median(audible), 4), "audible_p90_s": round(p90(audible), 4)})
    trials_rows = [await barge_trial(url, clips[LONG_QUESTION], clips[BARGE], 3000 + i) for i in range(trials)]
    cancelled = [r for r in trials_rows if r["status"] == "cancelled"]
    leak = [r["last_delta_after_speech_started_s"] for r in cancelled]
    barge = {
        "session": _session(LONG, 200), "question": LONG_QUESTION, "barge_in": BARGE, "trials": trials_rows,
        "cancelled": len(cancelled), "turn_detected": sum(r["reason"] == "turn_detected" for r in cancelled),
        "leak_median_s": round(statistics.median(leak), 4) if leak else None, "leak_max_s": round(max(leak), 4) if leak else None,
        "vad_onset_median_s": round(statistics.median(r["vad_onset_s"] for r in trials_rows), 4),
    }
    return latency, barge


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_rev": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
        "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
        "python": platform.python_version(), "hibari": metadata.version("hibari-tts"), "loadavg_start": os.getloadavg(),
    }


def summarize(results: dict[str, Any]) -> list[str]:
    rt, fb, lat, bi = results["tts_round_trip"], results["first_byte"], results["realtime_latency"], results["barge_in"]
    t, ref = TARGETS, lat["reference_median_s"]
    stages = "  ".join(f"{k} {v * 1000:.0f} ms ({lat['stage_share_of_median'][k]:.0%})" for k, v in lat["stage_median_s"].items())
    misses = "; ".join(f"{m['text']!r} -> {m['heard']!r}" for m in rt["misses"]) or "none"
    return [
        f"TTS round trip   WER {rt['wer']:.1%} ({rt['errors']}/{rt['words']} words, {len(rt['sentences'])} sentences)  target ≤ {t['wer']:.0%}, bar {t['wer_bar']:.0%}",
        f"  misses: {misses}",
        f"Synthesis RTF    engine {rt['rtf_engine_total']:.1f}x (median {rt['rtf_engine_median']:.1f}x)  HTTP {rt['rtf_http_total']:.1f}x "
        f"(median {rt['rtf_http_median']:.1f}x)  target ≥ {t['rtf']:.0f}x",
        f"pcm 3 sentences  TTFB {fb['ttfb_s_median'] * 1000:.0f} ms of {fb['total_s_median'] * 1000:.0f} ms ({fb['ttfb_to_total']:.2f}); engine first "
        f"sentence {fb['engine_first_sentence_s_median'] * 1000:.0f} of {fb['engine_total_s_median'] * 1000:.0f} ms ({fb['engine_first_to_total']:.2f})",
        f"Realtime         end of speech → first audio: median {lat['median_s'] * 1000:.0f} ms, p90 {lat['p90_s'] * 1000:.0f} ms "
        f"({lat['usable_turns']}/{len(lat['turns'])} turns)  bar ≤ {t['latency_bar_s']} s, goal ≤ {t['latency_goal_s']} s",
        f"  stages (median, share of median): {stages}; dominant: {lat['dominant_stage']}",
        f"  references: Whisper over HTTP {ref['whisper_http'] * 1000:.0f} ms (realtime/HTTP {lat['whisper_realtime_to_http']:.2f}); hibari in-process "
        f"first sentence {ref['tts_engine_first_sentence'] * 1000:.0f} ms (realtime/engine {lat['tts_realtime_to_engine']:.1f}); "
        f"answer starts with {ref['answer_leading_silence'] * 1000:.0f} ms of silence: to first audible sound median "
        f"{lat['audible_median_s'] * 1000:.0f} ms, p90 {lat['audible_p90_s'] * 1000:.0f} ms",
        f"Barge-in         {bi['cancelled']}/{len(bi['trials'])} cancelled ({bi['turn_detected']} turn_detected); audio after speech_started: "
        f"median {_ms(bi['leak_median_s'])}, max {_ms(bi['leak_max_s'])} (target ≤ {t['barge_leak_s'] * 1000:.0f} ms); VAD onset median {bi['vad_onset_median_s'] * 1000:.0f} ms",
    ]


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start deploy/local.yaml here)")
    parser.add_argument("--turns", type=int, default=12, help="realtime latency turns (after one warm-up)")
    parser.add_argument("--trials", type=int, default=6, help="barge-in trials")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from modalities.speech.config import SpeechConfig
    from modalities.speech.tts import Synthesizer

    synth = Synthesizer(SpeechConfig())  # the engine alone, as the Speech deployment builds it (1 thread)
    synth.synthesize("Warming up the engine.", "alloy")
    info = machine()
    from bench.service import open_service

    base, stop = open_service(args.url, SERVE_CONFIG, info)
    try:
        results: dict[str, Any] = {"command": " ".join([".venv/bin/python -m bench.voice", *(sys.argv[1:] if argv is None else argv)]),
                                   "service": args.url or "deploy/local.yaml, started here", "machine": info, "targets": TARGETS, "dither_seed": RUN_SEED}
        results["tts_round_trip"] = round_trip(base, synth)
        results["first_byte"] = first_byte(base, synth)
        results["realtime_latency"], results["barge_in"] = asyncio.run(realtime(base, synth, args.turns, args.trials))
    finally:
        if stop is not None:
            stop()
    info["loadavg_end"] = os.getloadavg()
    results["summary"] = summarize(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(results["summary"]))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
