"""The store's cost per Responses API turn: create_response + finish_response, one input and one
output item, the turn appended to a conversation.

    .venv/bin/python bench/store_overhead.py [--turns 200] [--dsn postgresql+asyncpg://...]

Default: SQLite (WAL, synchronous=NORMAL) in a temporary directory, turns one after another on one
conversation, as one user's chat. Prints p50/p95 in milliseconds as JSON (per turn, and per call).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from serve.store import Store, StoreConfig  # noqa: E402

OWNER = "bench"
WARMUP_TURNS = 10


def _message(item_id: str, role: str, text: str) -> dict:
    kind = "input_text" if role == "user" else "output_text"
    return {"type": "message", "id": item_id, "role": role, "content": [{"type": kind, "text": text}]}


def _percentiles(samples: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1e3, 3), "p95_ms": round(cuts[94] * 1e3, 3)}


async def measure(config: StoreConfig, turns: int) -> dict:
    store = await Store.open(config)
    try:
        await store.create_conversation(OWNER, "conv_bench", created_at=time.time(), metadata={}, items=[])
        create_s, finish_s, turn_s = [], [], []
        for i in range(WARMUP_TURNS + turns):
            rid = f"resp_{i:06d}"
            question = _message(f"msg_in_{i:06d}", "user", f"Where is my parcel number {i}? It is late.")
            answer = _message(f"msg_out_{i:06d}", "assistant", "It left the depot this morning; expect it tomorrow.")
            body = {"id": rid, "object": "response", "status": "in_progress", "output": []}
            t0 = time.perf_counter()
            await store.create_response(
                OWNER, rid, created_at=time.time(), model="tiny", body=body, input_items=[question],
                conversation_id="conv_bench",
            )
            t1 = time.perf_counter()
            await store.finish_response(
                OWNER, rid, status="completed", body={**body, "status": "completed", "output": [answer]},
                output_items=[answer],
            )
            t2 = time.perf_counter()
            if i >= WARMUP_TURNS:
                create_s.append(t1 - t0)
                finish_s.append(t2 - t1)
                turn_s.append(t2 - t0)
        assert len(await store.all_conversation_items(OWNER, "conv_bench")) == 2 * (WARMUP_TURNS + turns)
        return {
            "backend": store.backend,
            "turns": turns,
            "turn": _percentiles(turn_s),
            "create_response": _percentiles(create_s),
            "finish_response": _percentiles(finish_s),
        }
    finally:
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--dsn", default=None, help="a PostgreSQL DSN instead of SQLite in a temp dir")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chorus-store-bench-") as data_dir:
        config = StoreConfig(dsn=args.dsn or f"sqlite+aiosqlite:///{data_dir}/chorus.db")
        print(json.dumps(asyncio.run(measure(config, args.turns)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
