"""The served sampling defaults, side by side: what a request that sets no temperature gets from
`make serve` (deploy/local.yaml's `llm.default_sampling`) and what it got at OpenAI's 1.0.

Sends the README's quickstart question and a short multi-turn support chat N times each, with no
sampling fields and with `temperature: 1.0`, to a service started here from deploy/local.yaml, and
writes every answer (for a person to read) and its length. Run: `python -m bench.sampling_defaults`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from bench.service import start_service, stop_service
from serve.ports import free_port

QUICKSTART = [{"role": "user", "content": "Where is my parcel?"}]  # README's curl, verbatim
SUPPORT_CHAT = [
    {"role": "system", "content": "You are the support assistant of ShopCo, an online shop. Be brief and polite."},
    {"role": "user", "content": "Hi, my parcel has not arrived yet."},
    {"role": "assistant", "content": "I'm sorry to hear that. Could you give me your order number?"},
    {"role": "user", "content": "It is SC104233. I ordered it two weeks ago."},
]
SETTINGS = {"served default": {}, "temperature 1.0 (OpenAI's default)": {"temperature": 1.0}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured/sampling_defaults.json"))
    args = parser.parse_args()
    base, _ = start_service(free_port())
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        with httpx.Client(timeout=300) as client:
            for label, extra in SETTINGS.items():
                results[label] = {}
                for name, messages in (("quickstart", QUICKSTART), ("support chat", SUPPORT_CHAT)):
                    answers = []
                    for _ in range(args.repeats):
                        body = {"model": "chorus", "messages": messages, **extra}
                        reply = client.post(f"{base}/v1/chat/completions", json=body).raise_for_status().json()
                        answer = reply["choices"][0]["message"]["content"]
                        answers.append({"answer": answer, "completion_tokens": reply["usage"]["completion_tokens"]})
                        print(f"{label} | {name} | {answer[:160]!r}")
                    results[label][name] = answers
    finally:
        stop_service()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
