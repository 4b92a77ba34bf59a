"""PII redaction for what the service writes down (logs), never for what the client receives.

Callers' transcripts and prompts carry e-mail addresses, phone numbers, card numbers, IBANs and
postal addresses. `redact(text)` replaces each with a typed placeholder (`[EMAIL]`, `[PHONE]`,
`[CARD]`, `[IBAN]`, `[ADDRESS]`); `RedactingFilter` applies it to every log record of a logger,
exception tracebacks included (a validation error or a failing runtime can quote the prompt).

Detectors, in priority order (an earlier one wins where spans overlap):

- e-mail: a conventional address regex;
- IBAN: country code + check digits + 11–30 letters/digits, grouped in fours or not, that pass the
  ISO 13616 mod-97 check;
- card: 13–19 digits in the usual groupings (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4, or one run)
  that pass the Luhn check, so a 16-digit order number is left alone;
- phone: Google's libphonenumber (`phonenumbers`) finds candidates (international with `+`, US
  and UK national formats); national ones must have 10+ digits (UK: a trunk 0), and a bare digit
  run counts only after a phone word ("call", "number", "mobile", ...);
- address: a street line with capitalised street words ("123 Main Street", "221B Baker St, Apt 4",
  "Flat 3, 14 Mill Lane", optionally ", City, ST 12345") and UK postcodes ("SW1A 1AA"). An
  all-lowercase "14 mill lane" is not caught: lowercase would also catch "2 hours on the road".

Prices, dates, times, order and tracking numbers stay (tests/unit/test_redact.py measures recall
per type on a synthetic customer-service corpus and checks these false positives).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import phonenumbers

EMAIL, PHONE, CARD, IBAN, ADDRESS = "EMAIL", "PHONE", "CARD", "IBAN", "ADDRESS"

_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b")

# Country code, check digits, then the BBAN in groups of four (spaced or not) and a short tail.
_IBAN_RE = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", re.I)
IBAN_MIN_LEN, IBAN_MAX_LEN = 15, 34

# Separators must be consistent within one number (\1); groupings as cards are printed.
_CARD_RE = re.compile(
    r"(?<![\d-])(?:"
    r"\d{4}([ .-]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?"  # 16 or 19 digits, 4-4-4-4[-3]
    r"|\d{4}([ .-]?)\d{6}\2\d{4,5}"  # Amex 4-6-5, Diners 4-6-4
    r"|\d{13,19}"  # one run
    r")(?![\d])"
)
CARD_MIN_DIGITS, CARD_MAX_DIGITS = 13, 19

_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Ter"
    r"|Close|Crescent|Cres|Parkway|Pkwy|Highway|Hwy|Square|Sq|Circle|Cir|Row|Gardens|Grove|Mews|Hill)"
)
_STREET_RE = re.compile(
    r"(?:\b(?:Flat|Apt|Apartment|Unit|Suite)\s+\w{1,5},?\s+)?"  # unit first (UK: "Flat 3, 14 Mill Lane")
    r"\b\d{1,5}[A-Za-z]?,?\s+"  # house number (221B)
    r"(?:(?:[NSEW]|North|South|East|West)\.?\s+)?"
    r"(?:[A-Z][a-z]+\.?\s+){1,3}"  # street name, capitalised words
    + _STREET_SUFFIX
    + r"\b\.?"
    r"(?:\s+(?:NE|NW|SE|SW|N|S|E|W)\b)?"  # "1600 Pennsylvania Avenue NW"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|#)\.?\s*#?\w{1,6})?"  # unit
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2},?\s+[A-Z]{2}\s+\d{5}(?:-\d{4})?)?"  # , City, ST 12345
)
_UK_POSTCODE_RE = re.compile(r"\b(?:GIR ?0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})\b")

# (region, leniency): US numbers written nationally, UK numbers written nationally; "+" numbers
# are found by either.
_PHONE_PASSES = (("US", phonenumbers.Leniency.VALID), ("GB", phonenumbers.Leniency.POSSIBLE))


MIN_NATIONAL_DIGITS = 10  # US 10, UK 10-11; shorter local numbers are too easily order numbers
PHONE_CUE_WINDOW = 40
_PHONE_CUE_RE = re.compile(
    r"\b(?:(?:tele)?phon(?:e|ed|ing)|call(?:ed|ing)?|tel|mobile|cell|numbers?|reach|text(?:ed|ing)?|ring(?:ing)?"
    r"|rang|contact|fax|dial(?:led|ing)?|whatsapp)\b",
    re.I,
)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, the number mod 97 is 1."""
    iban = iban.replace(" ", "").upper()
    if not (IBAN_MIN_LEN <= len(iban) <= IBAN_MAX_LEN) or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _emails(text: str) -> list[Finding]:
    return [Finding(EMAIL, m.start(), m.end()) for m in _EMAIL_RE.finditer(text)]


def _ibans(text: str) -> list[Finding]:
    found = []
    for m in _IBAN_RE.finditer(text):
        candidate = m.group()
        # The pattern may run into a following word ("... 32 THANKS"): try shorter prefixes too.
        for end in range(len(candidate), 0, -1):
            if candidate[end - 1] == " ":
                continue
            if iban_valid(candidate[:end]):
                found.append(Finding(IBAN, m.start(), m.start() + end))
                break
    return found


def _cards(text: str) -> list[Finding]:
    found = []
    for m in _CARD_RE.finditer(text):
        digits = re.sub(r"[ .-]", "", m.group())
        if CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS and luhn_valid(digits):
            found.append(Finding(CARD, m.start(), m.end()))
    return found


def _phone_shaped(text: str, start: int, raw: str, region: str) -> bool:
    """National numbers need 10+ digits (UK ones a trunk 0), and a bare digit run needs a phone
    word before it: order, ticket and reference numbers are digit runs too."""
    if raw.startswith("+"):
        return True
    if region == "GB" and not raw.lstrip("(").startswith("0"):
        return False
    digits = sum(ch.isdigit() for ch in raw)
    if digits < MIN_NATIONAL_DIGITS:
        return False
    return not raw.isdigit() or _PHONE_CUE_RE.search(text, max(0, start - PHONE_CUE_WINDOW), start) is not None


def _phones(text: str) -> list[Finding]:
    found = []
    for region, leniency in _PHONE_PASSES:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency):
            # Digits glued to letters are a product or tracking code (1Z999AA10123456784), not a number.
            glued = (match.start > 0 and text[match.start - 1].isalnum()) or (
                match.end < len(text) and text[match.end].isalnum()
            )
            if not glued and _phone_shaped(text, match.start, match.raw_string, region):
                found.append(Finding(PHONE, match.start, match.end))
    return found


def _addresses(text: str) -> list[Finding]:
    streets = [Finding(ADDRESS, m.start(), m.end()) for m in _STREET_RE.finditer(text)]
    postcodes = [Finding(ADDRESS, m.start(), m.end()) for m in _UK_POSTCODE_RE.finditer(text)]
    return streets + postcodes


_DETECTORS = ((EMAIL, _emails), (IBAN, _ibans), (CARD, _cards), (PHONE, _phones), (ADDRESS, _addresses))


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings in text order; where two overlap, the higher-priority kind wins."""
    accepted: list[Finding] = []
    for _, detect in _DETECTORS:
        for finding in detect(text):
            if all(finding.end <= a.start or finding.start >= a.end for a in accepted):
                accepted.append(finding)
    return sorted(accepted, key=lambda f: f.start)


def redact(text: str) -> str:
    """`text` with every finding replaced by its `[KIND]` placeholder."""
    if not text:
        return text
    pieces, last = [], 0
    for finding in find_pii(text):
        pieces.append(text[last : finding.start])
        pieces.append(f"[{finding.kind}]")
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces)


class RedactingFilter(logging.Filter):
    """Redacts a record's message and its traceback before any handler formats it.

    Attach it to the logger that emits the records (logger filters do not see records propagated
    from child loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
