"""Which constrained-decoding library: llguidance, xgrammar and outlines-core on our own tokenizer.

For each schema: the first-use compile time, and the per-token time to compute the allowed-token
mask while a valid document is fed token by token (what the engine pays per step), plus whether the
library accepts the schema at all. Run: `python -m bench.grammar_backends [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SCHEMAS: dict[str, tuple[dict, dict]] = {
    "order_lookup": (
        {
            "type": "object",
            "properties": {"order_id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{6}$"}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
        {"order_id": "AB123456"},
    ),
    "return_request": (
        {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "reason": {"type": "string", "enum": ["damaged", "wrong_item", "late", "other"]},
                "items": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
                "refund": {"type": "boolean"},
                "amount": {"type": "number", "minimum": 0},
            },
            "required": ["order_id", "reason", "items", "refund"],
            "additionalProperties": False,
        },
        {"order_id": "A-1", "reason": "damaged", "items": ["blue kettle", "lid"], "refund": True, "amount": 19.5},
    ),
    "nested_invoice": (
        {
            "type": "object",
            "properties": {
                "customer": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
                    "required": ["name", "email"],
                },
                "lines": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}},
                        "required": ["sku", "qty", "price"],
                    },
                },
                "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
            },
            "required": ["customer", "lines", "currency"],
        },
        {
            "customer": {"name": "Ana Diaz", "email": "ana@example.com"},
            "lines": [{"sku": "K-100", "qty": 2, "price": 9.99}, {"sku": "L-7", "qty": 1, "price": 120}],
            "currency": "EUR",
        },
    ),
}


def _tokenizer():
    from modalities.llm.embedding_model import load_tokenizer
    from modalities.llm.weights import prepare_llm

    return load_tokenizer(prepare_llm())


def _doc_tokens(tokenizer, document: dict) -> list[int]:
    return tokenizer.encode(json.dumps(document, separators=(", ", ": ")), add_special_tokens=False) + [
        tokenizer.eos_token_id
    ]


def bench_llguidance(tokenizer, schema: dict, tokens: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    started = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    )
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    compile_s = time.perf_counter() - started
    if matcher.is_error():
        return {"error": matcher.get_error()}
    mask = lt.allocate_token_bitmask(1, ll_tokenizer.vocab_size)
    times = []
    for token in tokens:
        started = time.perf_counter()
        lt.fill_next_token_bitmask(matcher, mask, 0)
        times.append(time.perf_counter() - started)
        if not matcher.consume_token(token):
            return {"error": f"rejected a valid token: {matcher.get_error()}"}
    return {"compile_ms": compile_s * 1000, "mask_us": statistics.median(times) * 1e6, "tokens": len(tokens)}


def bench_xgrammar(tokenizer, schema: dict, tokens: list[int], cache: dict) -> dict:
    import torch
    import xgrammar as xgr

    if "compiler" not in cache:
        started = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=len(tokenizer))
        cache["compiler"] = xgr.GrammarCompiler(info, cache_enabled=False)
        cache["info"] = info
        cache["setup_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        compiled = cache["compiler"].compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(", ", ": ")
        )
    except Exception as e:  # noqa: BLE001 - reported as the library's answer
        return {"error": str(e)[:200]}
    compile_s = time.perf_counter() - started
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, cache["info"].vocab_size)
    times = []
    for token in tokens:
        started = time.perf_counter()
        matcher.fill_next_token_bitmask(mask, 0)
        times.append(time.perf_counter() - started)
        if not matcher.accept_token(token):
            return {"error": "rejected a valid token"}
    del torch
    return {"compile_ms": compile_s * 1000, "mask_us": statistics.median(times) * 1e6, "tokens": len(tokens)}


def bench_outlines(tokenizer, schema: dict, tokens: list[int], cache: dict) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    if "vocab" not in cache:  # each token by its bytes (not the byte-level BPE spelling, "Ġ" for a space)
        import llguidance.hf

        spelled = llguidance.hf.from_tokenizer(tokenizer)
        eos = tokenizer.eos_token_id
        special = set(tokenizer.all_special_ids)
        vocab: dict[bytes, list[int]] = {}
        for index in range(len(tokenizer)):
            if index != eos and index not in special:
                vocab.setdefault(spelled.decode_bytes([index]), []).append(index)
        cache["vocab"] = Vocabulary(eos, vocab)
    started = time.perf_counter()
    try:
        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern=r"[ ]?")
        index = Index(regex, cache["vocab"])
    except Exception as e:  # noqa: BLE001
        return {"error": str(e)[:200]}
    compile_s = time.perf_counter() - started
    guide = Guide(index)
    times = []
    for token in tokens[:-1]:
        started = time.perf_counter()
        allowed = guide.get_tokens()
        times.append(time.perf_counter() - started)
        if token not in allowed:
            return {"error": "rejected a valid token", "compile_ms": compile_s * 1000}
        guide.advance(token)
    return {"compile_ms": compile_s * 1000, "mask_us": statistics.median(times) * 1e6, "tokens": len(tokens)}


def _installed(bench, *args) -> dict:
    """The library's figures, or a note that it is not installed (the bench extra brings both)."""
    try:
        return bench(*args)
    except ImportError as e:
        return {"error": f"not installed ({e.name}): pip install -e '.[bench]'"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/structured/grammar_backends.json"))
    args = parser.parse_args()
    tokenizer = _tokenizer()
    results: dict[str, dict] = {}
    xgr_cache: dict = {}
    outlines_cache: dict = {}
    for name, (schema, document) in SCHEMAS.items():
        tokens = _doc_tokens(tokenizer, document)
        results[name] = {
            "llguidance": bench_llguidance(tokenizer, schema, tokens),
            "xgrammar": _installed(bench_xgrammar, tokenizer, schema, tokens, xgr_cache),
            "outlines-core": _installed(bench_outlines, tokenizer, schema, tokens, outlines_cache),
        }
        print(name, json.dumps(results[name]))
    results["xgrammar_tokenizer_setup_ms"] = xgr_cache.get("setup_ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
