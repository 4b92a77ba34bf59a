"""Answers about photos and PDFs, and a photo question's time to first token, through the live API.

Chat Completions with the default fusion for images (OCR: the text read goes into the prompt).

Three measurements, every request sent alone (one at a time, each after the previous finished):

a. Answers on the held-out phone-photo set (bench/vision_set.py, 28 images, regenerated here unless
   --set names one): per image its question, a text part then the image part (as OpenAI's docs
   show), temperature 0, max_tokens 64, not streamed, `chorus.return_media_text` on. A hit is the
   item's `answer` string inside the answer. Two normalisations: exact substring (the headline), and
   with all whitespace removed and case folded. Per miss, whether the OCR text the model was given
   (`chorus.media[0].text`, lines joined with one space) held the answer: a miss is the OCR's when
   it did not, the model's when it did.
b. Time to first token of a ~1-megapixel photo (the set's images of 0.8-1.3 MP): a streamed
   request (`stream_options.include_usage`, `return_media_text`), TTFT = from sending the request to
   the first chunk with non-empty `delta.content`, client-measured over a kept-alive connection (as
   bench/service.py's `api_stamps`). Cold: the image's first sight: its JPEG carries a comment
   segment unique to this run (same pixels, new bytes, so the replica's OCR cache, keyed by the
   bytes' SHA-256, cannot answer even on a service that has seen the set); OCR share =
   `chorus.media[0].ocr_ms` / TTFT. Warm: the same bytes again (must come back `cached: true`,
   `ocr_ms` 0). Each request's question carries a ticket number new to this run, so the decoder's
   prefix cache reuses the system prompt and nothing more (cold and warm prefill the same text).
c. PDFs, 5 seeds each: a 3-page text invoice (tests/pdfs.py `text_pdf`, amounts from a seeded RNG,
   the total on page 3) and a one-page scan (`scanned_pdf` of an invoice page drawn with Pillow,
   "TOTAL DUE $…" at ~40 px), asked "What is the total amount due on this invoice?"; a hit is the
   printed total ("$1,482.35") inside the answer (also reported: the amount without the currency
   sign, with or without the thousands comma). Each page's `source` (text / ocr) is recorded.

    python -m bench.vision_answers [--set DIR] [--out FILE] [--url URL]

Without --url it starts deploy/local.yaml's app in this process on a free port (bench.service) and
stops it at the end. Writes --out (default bench/results/vision/answers.json) and prints the tables.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageFont

from bench.service import parse_server_timing
from bench.vision_set import KINDS, build_set, load_set

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "vision" / "answers.json"
SERVE_CONFIG = REPO / "deploy" / "local.yaml"
MODEL = "chorus"
MAX_TOKENS = 64
TTFT_MAX_TOKENS = 16  # the first token is what is timed; a few more show the stream goes on
ONE_MP = (0.8, 1.3)  # megapixels of the "1-MP photo" images
PDF_QUESTION = "What is the total amount due on this invoice?"
PDF_SEEDS = (101, 202, 303, 404, 505)
REQUEST_TIMEOUT_S = 600
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")


# ------------------------------------------------------------------------------------------- helpers


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def layout(text: str) -> str:
    """Whitespace runs (line breaks too) collapsed to one space."""
    return " ".join(text.split())


def squeeze(text: str) -> str:
    """All whitespace removed, case folded."""
    return "".join(text.split()).casefold()


def found(answer: str, text: str | None) -> dict[str, bool]:
    """Whether `answer` is in `text`: as an exact substring, and with spaces ignored and case folded."""
    text = text or ""
    return {"exact": answer in text, "nospace": squeeze(answer) in squeeze(text)}


def with_comment(jpeg: bytes, comment: str) -> bytes:
    """The JPEG with a COM segment right after SOI: the same pixels, other bytes (another SHA-256)."""
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    body = comment.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


class Api:
    """One kept-alive HTTP client to the service (as the openai SDK keeps one)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.client = httpx.Client(timeout=REQUEST_TIMEOUT_S)

    def body(self, text: str, part: dict[str, Any], max_tokens: int, **extra: Any) -> dict[str, Any]:
        return {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": text}, part]}],
                "temperature": 0, "max_tokens": max_tokens, "chorus": {"return_media_text": True}, **extra}

    def complete(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, float, str | None]:
        """(response payload or None, seconds, error) of one non-streamed request."""
        start = time.perf_counter()
        try:
            resp = self.client.post(f"{self.base}/v1/chat/completions", json=body)
            seconds = time.perf_counter() - start
            if resp.status_code != 200:
                return None, seconds, f"HTTP {resp.status_code}: {resp.text[:500]}"
            return resp.json(), seconds, None
        except httpx.HTTPError as e:
            return None, time.perf_counter() - start, f"{type(e).__name__}: {str(e)[:500]}"

    def stream(self, body: dict[str, Any]) -> dict[str, Any]:
        """One streamed request: TTFT (first chunk with text), total time, `chorus` of the first chunk,
        usage, Server-Timing, the text."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        out: dict[str, Any] = {"ttft_s": None, "total_s": None, "chorus": None, "usage": None, "server_timing_s": {},
                               "text": "", "error": None}
        parts: list[str] = []
        start = time.perf_counter()
        try:
            with self.client.stream("POST", f"{self.base}/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    out["error"] = f"HTTP {resp.status_code}: {resp.text[:500]}"
                    return out
                out["server_timing_s"] = parse_server_timing(resp.headers.get("server-timing"))
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: "):])
                    if "error" in chunk:
                        out["error"] = json.dumps(chunk["error"])[:500]
                    if out["chorus"] is None and chunk.get("chorus") is not None:
                        out["chorus"] = chunk["chorus"]
                    if chunk.get("usage"):
                        out["usage"] = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            if out["ttft_s"] is None:
                                out["ttft_s"] = time.perf_counter() - start
                            parts.append(content)
        except httpx.HTTPError as e:
            out["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        out["total_s"] = time.perf_counter() - start
        out["text"] = "".join(parts)
        if out["ttft_s"] is None and out["error"] is None:
            out["error"] = "the stream ended without content"
        return out


def _choice(payload: dict[str, Any] | None) -> dict[str, Any]:
    return ((payload or {}).get("choices") or [{}])[0]


def _answer(payload: dict[str, Any] | None) -> str:
    return (_choice(payload).get("message") or {}).get("content") or ""


def _first_media(payload: dict[str, Any] | None) -> dict[str, Any]:
    media = ((payload or {}).get("chorus") or {}).get("media") or [{}]
    return media[0]


def _pct(hits: int, of: int) -> float | None:
    return round(100 * hits / of, 1) if of else None


# ------------------------------------------------------------------------------------ a. answers


def ask_image(api: Api, set_dir: Path, item: dict[str, Any]) -> dict[str, Any]:
    jpeg = (set_dir / item["file"]).read_bytes()
    part = {"type": "image_url", "image_url": {"url": data_url(jpeg, "image/jpeg")}}
    payload, seconds, error = api.complete(api.body(item["question"], part, MAX_TOKENS))
    choice, answer = _choice(payload), _answer(payload)
    media = _first_media(payload)
    ocr_text = media.get("text")
    hit = found(item["answer"], answer)
    ocr = found(layout(item["answer"]), layout(ocr_text or ""))
    usage = (payload or {}).get("usage") or {}

    def cause(norm: str) -> str | None:
        if hit[norm]:
            return None
        return "model" if ocr[norm] else "ocr"

    return {"id": item["id"], "kind": item["kind"], "megapixels": item["megapixels"], "question": item["question"],
            "expected": item["answer"], "answer": answer, "hit_exact": hit["exact"], "hit_nospace": hit["nospace"],
            "ocr_has_answer_exact": ocr["exact"], "ocr_has_answer_nospace": ocr["nospace"],
            "miss_cause_exact": cause("exact"), "miss_cause_nospace": cause("nospace"),
            "ocr_text": ocr_text, "ocr_lines": len(media.get("lines") or []), "ocr_truncated": media.get("truncated"),
            "cached": media.get("cached"), "ocr_ms": media.get("ocr_ms"), "latency_s": round(seconds, 3),
            "finish_reason": choice.get("finish_reason"), "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"), "error": error}


def summarize_answers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    exact, nospace = sum(r["hit_exact"] for r in rows), sum(r["hit_nospace"] for r in rows)
    ocr_had = sum(r["ocr_has_answer_exact"] for r in rows)
    return {"images": n, "hits_exact": exact, "hits_nospace": nospace, "exact_pct": _pct(exact, n),
            "nospace_pct": _pct(nospace, n), "ocr_had_answer_exact": ocr_had,
            "ocr_had_answer_nospace": sum(r["ocr_has_answer_nospace"] for r in rows),
            "misses_model_exact": sum(r["miss_cause_exact"] == "model" for r in rows),
            "misses_ocr_exact": sum(r["miss_cause_exact"] == "ocr" for r in rows),
            "misses_model_nospace": sum(r["miss_cause_nospace"] == "model" for r in rows),
            "misses_ocr_nospace": sum(r["miss_cause_nospace"] == "ocr" for r in rows),
            "errors": sum(r["error"] is not None for r in rows)}


def section_answers(api: Api, set_dir: Path, items: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for item in items:
        row = ask_image(api, set_dir, item)
        rows.append(row)
        print(f"  {row['id']:11s} {'HIT ' if row['hit_exact'] else ('hit~' if row['hit_nospace'] else 'miss')} "
              f"ocr {'has' if row['ocr_has_answer_exact'] else 'no '}  {row['latency_s']:6.2f} s  "
              f"{(row['error'] or row['answer'])[:90]!r}", flush=True)
    summary = {kind: summarize_answers([r for r in rows if r["kind"] == kind]) for kind in KINDS}
    summary["all"] = summarize_answers(rows)
    return {"headline": "exact", "summary": summary, "items": rows}


# ----------------------------------------------------------------------------------- b. TTFT


def one_mp(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in items if ONE_MP[0] <= item["megapixels"] <= ONE_MP[1]]


def _stream_row(result: dict[str, Any]) -> dict[str, Any]:
    media = _first_media({"chorus": result["chorus"]})
    ttft, ocr_ms = result["ttft_s"], media.get("ocr_ms")
    return {"ttft_s": None if ttft is None else round(ttft, 4), "total_s": round(result["total_s"], 3),
            "cached": media.get("cached"), "ocr_ms": ocr_ms,
            "ocr_share": round(ocr_ms / 1000 / ttft, 3) if ttft and ocr_ms is not None else None,
            "server_timing_s": result["server_timing_s"],
            "prompt_tokens": (result["usage"] or {}).get("prompt_tokens"), "text": result["text"], "error": result["error"]}


def section_ttft(api: Api, set_dir: Path, items: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    rows = []
    for n, item in enumerate(one_mp(items)):
        jpeg = with_comment((set_dir / item["file"]).read_bytes(), f"chorus bench {tag} {item['id']}")
        part = {"type": "image_url", "image_url": {"url": data_url(jpeg, "image/jpeg")}}
        cold = _stream_row(api.stream(api.body(f"Ticket {tag}-{2 * n + 1}: {item['question']}", part, TTFT_MAX_TOKENS)))
        warm = _stream_row(api.stream(api.body(f"Ticket {tag}-{2 * n + 2}: {item['question']}", part, TTFT_MAX_TOKENS)))
        rows.append({"id": item["id"], "megapixels": item["megapixels"], "size": item["size"], "cold": cold, "warm": warm})
        print(f"  {item['id']:11s} {item['megapixels']:4.2f} MP  cold {_s(cold['ttft_s'])} (OCR {cold['ocr_ms']} ms, "
              f"cached {cold['cached']})  warm {_s(warm['ttft_s'])} (cached {warm['cached']})"
              f"{'  ' + (cold['error'] or warm['error']) if cold['error'] or warm['error'] else ''}", flush=True)
    return {"max_tokens": TTFT_MAX_TOKENS, "megapixel_range": list(ONE_MP), "summary": summarize_ttft(rows), "items": rows}


def _s(value: float | None) -> str:
    return "   -   " if value is None else f"{value:6.3f}s"


def summarize_ttft(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cold = [r["cold"]["ttft_s"] for r in rows if r["cold"]["ttft_s"] is not None and r["cold"]["cached"] is False]
    shares = [r["cold"]["ocr_share"] for r in rows if r["cold"]["ocr_share"] is not None and r["cold"]["cached"] is False]
    ocr_s = [r["cold"]["ocr_ms"] / 1000 for r in rows if r["cold"]["ocr_ms"] and r["cold"]["cached"] is False]
    warm = [r["warm"]["ttft_s"] for r in rows if r["warm"]["ttft_s"] is not None]
    hits = sum(r["warm"]["cached"] is True for r in rows)
    return {"images": len(rows), "cold_measured": len(cold),
            "cold_cached_unexpectedly": sum(r["cold"]["cached"] is True for r in rows),
            "cold_ttft_median_s": _med(cold), "cold_ttft_max_s": round(max(cold), 3) if cold else None,
            "ocr_median_s": _med(ocr_s), "ocr_share_median": _med(shares), "warm_ttft_median_s": _med(warm),
            "warm_ttft_max_s": round(max(warm), 3) if warm else None,
            "repeat_cache_hits": hits, "repeat_cache_hit_pct": _pct(hits, len(rows)),
            "errors": sum(bool(r["cold"]["error"] or r["warm"]["error"]) for r in rows)}


def _med(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


# ------------------------------------------------------------------------------------ c. PDFs

INVOICE_ITEMS = ["Consulting (hours)", "Annual support plan", "Wireless keyboard", "USB-C cable 2 m", "Laptop stand",
                 "Webcam 1080p", "Toner cartridge", "Network switch", "Office chair", "Label printer", "Desk lamp",
                 "Headset USB", "Installation and setup", "Software licence"]


def _invoice(seed: int) -> dict[str, Any]:
    """An invoice's content from a seeded RNG: rows (name, qty, unit price, amount), tax, total."""
    rng = random.Random(seed)
    rows = []
    for name in rng.sample(INVOICE_ITEMS, 8):
        qty, price = rng.randint(1, 6), round(rng.uniform(9, 240), 2)
        rows.append((name, qty, price, round(qty * price, 2)))
    subtotal = round(sum(r[3] for r in rows), 2)
    rate = rng.choice((0.05, 0.07, 0.08, 0.1))
    tax = round(subtotal * rate, 2)
    number = f"INV-{rng.randint(2023, 2025)}-{rng.randint(10000, 99999)}"
    return {"number": number, "rows": rows, "subtotal": subtotal, "rate": rate, "tax": tax,
            "total": round(subtotal + tax, 2)}


def money(value: float) -> str:
    return f"${value:,.2f}"


def text_invoice_pdf(seed: int) -> tuple[bytes, str]:
    """(a 3-page text PDF, its printed total): items on pages 1-2, the total on page 3."""
    from tests.pdfs import text_pdf

    inv = _invoice(seed)
    lines = [f"{name}  x{qty}  @ {money(price)}  =  {money(amount)}" for name, qty, price, amount in inv["rows"]]
    pages = [
        [f"INVOICE {inv['number']}", "Harbor Office Supplies, 12 Commerce Dr, Raleigh, NC 27601",
         "Bill to: Kestrel Systems GmbH, Lindenweg 14, 10115 Berlin", "", "Items (page 1 of 2)", *lines[:4]],
        [f"INVOICE {inv['number']} (continued)", "Items (page 2 of 2)", *lines[4:]],
        [f"INVOICE {inv['number']} (summary)", f"Subtotal: {money(inv['subtotal'])}",
         f"Sales tax ({inv['rate']:.0%}): {money(inv['tax'])}", f"Total due: {money(inv['total'])}", "",
         "Payment within 30 days by bank transfer."],
    ]
    assert all(len("".join(page)) >= 16 for page in pages)  # a text page, not treated as scanned
    return text_pdf(pages), money(inv["total"])


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = FONT_DIR / name
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size)


def scanned_invoice_page(seed: int) -> tuple[Image.Image, str]:
    """(an A4 invoice page at 150 dpi, drawn as a scanner would give it back, its printed total)."""
    inv = _invoice(seed)
    page = Image.new("RGB", (1240, 1754), (247, 246, 242))
    d = ImageDraw.Draw(page)
    head, body, bold, total = (_font("DejaVuSans-Bold.ttf", 44), _font("DejaVuSans.ttf", 26),
                               _font("DejaVuSans-Bold.ttf", 28), _font("DejaVuSans-Bold.ttf", 40))
    ink = (25, 25, 30)
    d.text((100, 110), "INVOICE", font=head, fill=ink)
    d.text((1140, 120), inv["number"], font=bold, fill=ink, anchor="ra")
    y = 220
    for line in ("Harbor Office Supplies", "12 Commerce Dr, Raleigh, NC 27601", "",
                 "Bill to: Kestrel Systems GmbH", "Lindenweg 14, 10115 Berlin"):
        d.text((100, y), line, font=body, fill=ink)
        y += 40
    y += 40
    d.text((100, y), "Description", font=bold, fill=ink)
    d.text((760, y), "Qty", font=bold, fill=ink, anchor="ra")
    d.text((1140, y), "Amount", font=bold, fill=ink, anchor="ra")
    y += 50
    d.line([(100, y - 8), (1140, y - 8)], fill=ink, width=2)
    for name, qty, _price, amount in inv["rows"]:
        d.text((100, y), name, font=body, fill=ink)
        d.text((760, y), str(qty), font=body, fill=ink, anchor="ra")
        d.text((1140, y), money(amount), font=body, fill=ink, anchor="ra")
        y += 46
    y += 20
    d.line([(600, y), (1140, y)], fill=ink, width=2)
    y += 30
    d.text((600, y), "Subtotal", font=body, fill=ink)
    d.text((1140, y), money(inv["subtotal"]), font=body, fill=ink, anchor="ra")
    y += 46
    d.text((600, y), f"Tax {inv['rate']:.0%}", font=body, fill=ink)
    d.text((1140, y), money(inv["tax"]), font=body, fill=ink, anchor="ra")
    y += 80
    d.text((100, y), f"TOTAL DUE {money(inv['total'])}", font=total, fill=ink)
    d.text((100, 1620), "Please pay within 30 days. Thank you for your business.", font=body, fill=ink)
    # a scanner's slight skew
    page = page.rotate(random.Random(seed).uniform(-0.8, 0.8), Image.Resampling.BICUBIC, fillcolor=(247, 246, 242))
    return page, money(inv["total"])


def ask_pdf(api: Api, pdf: bytes, total: str, kind: str, seed: int) -> dict[str, Any]:
    part = {"type": "file", "file": {"filename": f"invoice-{seed}.pdf", "file_data": data_url(pdf, "application/pdf")}}
    payload, seconds, error = api.complete(api.body(PDF_QUESTION, part, MAX_TOKENS))
    answer = _answer(payload)
    media = _first_media(payload)
    amount = total.lstrip("$")
    return {"kind": kind, "seed": seed, "expected": total, "answer": answer, "hit": total in answer,
            "hit_amount": amount in answer or amount.replace(",", "") in answer,
            "read_has_total": total in layout(media.get("text") or ""),
            "pages": [page.get("source") for page in media.get("pages") or []], "page_count": media.get("page_count"),
            "read_ms": media.get("read_ms"), "cached": media.get("cached"), "pdf_bytes": len(pdf),
            "latency_s": round(seconds, 3), "error": error}


def section_pdf(api: Api) -> dict[str, Any]:
    from tests.pdfs import scanned_pdf

    rows = []
    for kind in ("text", "scanned"):
        for seed in PDF_SEEDS:
            if kind == "text":
                pdf, total = text_invoice_pdf(seed)
            else:
                image, total = scanned_invoice_page(seed)
                pdf = scanned_pdf(image)
            row = ask_pdf(api, pdf, total, kind, seed)
            rows.append(row)
            print(f"  {kind:7s} seed {seed}  {'HIT ' if row['hit'] else 'miss'}  pages {row['pages']}  "
                  f"read {row['read_ms']} ms  {(row['error'] or row['answer'])[:80]!r}", flush=True)
    summary = {}
    for kind in ("text", "scanned"):
        mine = [r for r in rows if r["kind"] == kind]
        sources = sorted({s for r in mine for s in r["pages"]})
        summary[kind] = {"documents": len(mine), "hits": sum(r["hit"] for r in mine),
                         "hits_amount": sum(r["hit_amount"] for r in mine),
                         "read_has_total": sum(r["read_has_total"] for r in mine), "page_sources": sources,
                         "read_ms_median": _med([r["read_ms"] for r in mine if r["read_ms"] is not None and not r["cached"]]),
                         "errors": sum(r["error"] is not None for r in mine)}
    return {"question": PDF_QUESTION, "seeds": list(PDF_SEEDS), "summary": summary, "items": rows}


# ---------------------------------------------------------------------------------------- report


def tables(results: dict[str, Any]) -> str:
    out = [f"a. Answers, {results['answers']['summary']['all']['images']} held-out photos (temperature 0, "
           f"max_tokens {MAX_TOKENS}); headline: exact substring",
           f"{'kind':8s} {'imgs':>4s} {'exact':>12s} {'no-space/ci':>12s} {'OCR had it':>10s} {'miss: model':>11s} "
           f"{'miss: OCR':>9s}"]
    for kind, s in results["answers"]["summary"].items():
        out.append(f"{kind:8s} {s['images']:4d} {s['hits_exact']:3d} ({s['exact_pct']:5.1f}%) "
                   f"{s['hits_nospace']:3d} ({s['nospace_pct']:5.1f}%) {s['ocr_had_answer_exact']:10d} "
                   f"{s['misses_model_exact']:11d} {s['misses_ocr_exact']:9d}")
    out.append("(OCR had it: the answer in the OCR text, exact; misses attributed by that)")
    t = results["ttft"]["summary"]
    out += ["", f"b. TTFT, ~1-MP photos ({ONE_MP[0]}-{ONE_MP[1]} MP), streamed, one at a time: {t['images']} images",
            f"cold TTFT median {t['cold_ttft_median_s']} s, max {t['cold_ttft_max_s']} s  (OCR median {t['ocr_median_s']} s, "
            f"OCR share of TTFT median {_share(t['ocr_share_median'])})",
            f"warm TTFT median {t['warm_ttft_median_s']} s, max {t['warm_ttft_max_s']} s  (same image again: cache hits "
            f"{t['repeat_cache_hits']}/{t['images']} = {t['repeat_cache_hit_pct']} %)"]
    if t["cold_cached_unexpectedly"] or t["errors"]:
        out.append(f"!! cold requests answered from the cache: {t['cold_cached_unexpectedly']}; errors: {t['errors']}")
    p = results["pdf"]["summary"]
    out += ["", f"c. PDFs, '{PDF_QUESTION}'"]
    for kind, s in p.items():
        out.append(f"{kind:8s} hits {s['hits']}/{s['documents']} (amount without $: {s['hits_amount']}/{s['documents']}), "
                   f"total in the text read {s['read_has_total']}/{s['documents']}, page sources {s['page_sources']}, "
                   f"read median {s['read_ms_median']} ms")
    return "\n".join(out)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def misses(results: dict[str, Any]) -> str:
    out = ["misses (exact):"]
    for r in results["answers"]["items"]:
        if not r["hit_exact"]:
            out.append(f"  {r['id']:11s} [{r['miss_cause_exact']}{', hit ignoring spaces/case' if r['hit_nospace'] else ''}] "
                       f"Q: {r['question']}  expected: {r['expected']!r}  answer: {(r['error'] or r['answer'])!r}")
    for r in results["pdf"]["items"]:
        if not r["hit"]:
            out.append(f"  pdf {r['kind']} seed {r['seed']}: expected {r['expected']!r}, total read: {r['read_has_total']}, "
                       f"answer: {(r['error'] or r['answer'])!r}")
    return "\n".join(out)


def evaluate(base: str, set_dir: Path, service: str) -> dict[str, Any]:
    api = Api(base)
    items = load_set(set_dir)
    tag = secrets.token_hex(3)  # this run's: its cold images and its questions are new to the service
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "base_url": base, "service": service, "run_tag": tag,
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "load_avg_start": os.getloadavg()},
        "set": str(set_dir),
    }
    print(f"a. answers, {len(items)} images ...", flush=True)
    results["answers"] = section_answers(api, set_dir, items)
    print("b. time to first token, ~1-MP photos, cold then warm ...", flush=True)
    results["ttft"] = section_ttft(api, set_dir, items, tag)
    print("c. PDFs ...", flush=True)
    results["pdf"] = section_pdf(api)
    results["machine"]["load_avg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, help="a set written by bench.vision_set (default: generate one in a temp dir)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--url", help="a running service, e.g. http://127.0.0.1:8000 (default: start one here)")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:  # tests.pdfs, when run from elsewhere
        sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="vision-set-") as tmp:
        set_dir = args.set or Path(tmp)
        if not (set_dir / "manifest.json").exists():
            print(f"generating the set into {set_dir} ...", flush=True)
            build_set(set_dir)
        if args.url:
            results = evaluate(args.url.rstrip("/"), set_dir, f"running at {args.url}")
        else:
            from bench.service import start_service, stop_service
            from serve.ports import free_port

            print("starting the service (deploy/local.yaml) ...", flush=True)
            base, _ = start_service(free_port(), SERVE_CONFIG)
            try:
                results = evaluate(base, set_dir, "started here from deploy/local.yaml (bench.service.start_service)")
            finally:
                stop_service()
    if args.set is None:
        results["set"] = "generated (python -m bench.vision_set)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print()
    print(tables(results))
    print()
    print(misses(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
