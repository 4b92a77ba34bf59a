"""A stored follow-up turn against the same turn sent as a whole chat history.

Turn 1 sends a photo (samples/images/receipt.jpg) or a voice note (samples/audio/
where_is_my_order.wav) with a question through /v1/responses (stored). Turn 2 asks a follow-up
two ways, alternating so that load drift hits both alike:

- `stored`: /v1/responses with `previous_response_id` (the service reads the history, the media
  included, from its store);
- `history`: /v1/chat/completions with the whole conversation resent by the client (the media,
  turn 1's answer, the follow-up).

Both stream; TTFT is the time to the first text delta. /health's encoder cache counters are read
around every stored follow-up: a hit and no new miss means the media was not encoded again.
Run: `.venv/bin/python -m bench.conversation_turns` (starts deploy/local.yaml here) or
`--url http://127.0.0.1:8000` against a running service.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "conversations" / "turns.json"
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
MAX_STORED_TO_HISTORY_TTFT = 1.2  # the target
PAIRS = 8
MEDIA = {
    "image": {
        "part": lambda data: {"type": "input_image", "image_url": "data:image/jpeg;base64," + base64.b64encode(data).decode()},
        "chat": lambda data: {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(data).decode()}},
        "file": REPO / "samples" / "images" / "receipt.jpg",
        "question": "What is the TOTAL amount?",
        "follow_up": "And which shop is it from?",
        "deployment": "vision_encoder",
        "cache": ("ocr", "cache"),
    },
    "audio": {
        "part": lambda data: {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}},
        "chat": lambda data: {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}},
        "file": REPO / "samples" / "audio" / "where_is_my_order.wav",
        "question": "Answer this caller briefly:",
        "follow_up": "What should the caller do next?",
        "deployment": "audio_encoder",
        "cache": ("cache",),
    },
}
MAX_TOKENS = 16


def _stream_ttft(client: httpx.Client, url: str, body: dict[str, Any], responses: bool) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if responses and event.get("type") == "response.output_text.delta":
                return time.perf_counter() - started
            if not responses and any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                return time.perf_counter() - started
    raise RuntimeError(f"no text came back from {url}")


def _cache(client: httpx.Client, base: str, kind: str) -> dict[str, int]:
    info = client.get(f"{base}/health").json()["deployments"][MEDIA[kind]["deployment"]]
    for key in MEDIA[kind]["cache"]:
        info = info.get(key) or {}
    return dict(info)


def measure(base: str, kind: str, pairs: int = PAIRS) -> dict[str, Any]:
    spec = MEDIA[kind]
    data = Path(spec["file"]).read_bytes()
    client = httpx.Client(timeout=120)
    first = client.post(
        f"{base}/v1/responses",
        json={"model": "chorus", "temperature": 0, "max_output_tokens": 24,
              "input": [{"role": "user", "content": [{"type": "input_text", "text": spec["question"]}, spec["part"](data)]}]},
    )
    first.raise_for_status()
    turn1 = first.json()
    answer = "".join(p["text"] for o in turn1["output"] if o["type"] == "message" for p in o["content"])
    stored_body = {"model": "chorus", "temperature": 0, "max_output_tokens": MAX_TOKENS, "stream": True,
                   "previous_response_id": turn1["id"], "input": spec["follow_up"]}
    history_body = {
        "model": "chorus", "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": spec["question"]}, spec["chat"](data)]},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": spec["follow_up"]},
        ],
    }
    stored, history, reencoded = [], [], 0
    for i in range(pairs):
        order = [("stored", stored_body), ("history", history_body)]
        for name, body in order if i % 2 == 0 else reversed(order):
            before = _cache(client, base, kind)
            if name == "stored":
                stored.append(_stream_ttft(client, f"{base}/v1/responses", body, responses=True))
                after = _cache(client, base, kind)
                reencoded += int(after.get("misses", 0) > before.get("misses", 0))
            else:
                history.append(_stream_ttft(client, f"{base}/v1/chat/completions", body, responses=False))
    ratio = statistics.median(stored) / statistics.median(history)
    return {
        "media": kind,
        "pairs": pairs,
        "ttft_stored_median_s": round(statistics.median(stored), 4),
        "ttft_history_median_s": round(statistics.median(history), 4),
        "ratio": round(ratio, 3),
        "target_ratio": MAX_STORED_TO_HISTORY_TTFT,
        "met": ratio <= MAX_STORED_TO_HISTORY_TTFT,
        "stored_follow_ups_that_encoded_again": reencoded,
        "cache_after": _cache(client, base, kind),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running service (default: start deploy/local.yaml here)")
    parser.add_argument("--pairs", type=int, default=PAIRS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.url:
        base, stop = args.url.rstrip("/"), None
    else:
        import os
        import tempfile

        from bench.service import start_service, stop_service
        from serve.ports import free_port

        # the bench's turns go to a store of their own, not the user's (~/.local/share/chorus)
        os.environ["CHORUS_DATA_DIR"] = tempfile.mkdtemp(prefix="chorus-bench-store-")

        base, _ = start_service(free_port(), SERVE_CONFIG)
        stop = stop_service
    try:
        results = {"service": args.url or "deploy/local.yaml, started here", "turns": [measure(base, k, args.pairs) for k in MEDIA]}
    finally:
        if stop is not None:
            stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    for row in results["turns"]:
        print(
            f"{row['media']:6s} stored {row['ttft_stored_median_s'] * 1000:7.1f} ms  history {row['ttft_history_median_s'] * 1000:7.1f} ms"
            f"  ratio {row['ratio']:.3f} (target ≤ {MAX_STORED_TO_HISTORY_TTFT})  re-encoded {row['stored_follow_ups_that_encoded_again']}/{row['pairs']}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
