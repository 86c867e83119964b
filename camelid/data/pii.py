"""PII masking for `camelid clean`: e-mail addresses, phone numbers, ID numbers and bank cards, zh and en formats.

    text, found = mask_pii(text, ["email", "phone", "id_card", "bank_card"])   # found: Counter of kinds masked

Each kind is a regular expression, optionally with a validator that must accept the match (the checksum of a
mainland-China resident ID, the Luhn digit of a card), and the mask that replaces it. Kinds run in the order of
`PII` so that longer numbers are claimed first: an 18-digit ID is never read as a card, a card never as a phone.
Patterns expect normalized text (NFKC: full-width digits already ASCII).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable

# ID-card check digit (GB 11643-1999): weights 2^(17-i) mod 11 over the first 17 digits; sum mod 11 → this code.
_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
_ID_CHECK = "10X98765432"


def zh_id_ok(number: str) -> bool:
    """A mainland-China resident ID (18 characters) whose last character is the check digit of the first 17."""
    total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == number[17].upper()


def luhn_ok(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    if len(set(digits)) == 1:  # 0000 0000 0000 0000 passes Luhn and is no card
        return False
    odd = digits[-1::-2]
    even = [sum(divmod(2 * d, 10)) for d in digits[-2::-2]]
    return (sum(odd) + sum(even)) % 10 == 0


def _enough_digits(number: str) -> bool:
    return len(re.sub(r"\D", "", number)) >= 8


# Boundaries are ASCII letters/digits only: Chinese writes numbers right after characters (手机13812345678).
_ND = r"(?<![0-9A-Za-z+])"  # no ASCII letter, digit or '+' just before: never a match inside a longer token
_NA = r"(?![0-9A-Za-z])"  # and none just after
_ZH_ID = (r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]")
_US_SSN = r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}"

# kind → (pattern, validator or None, mask)
PII: dict[str, tuple[re.Pattern, Callable[[str], bool] | None, str]] = {
    "email": (re.compile(r"(?<![A-Za-z0-9.%+-])[A-Za-z0-9.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"),
              None, "[EMAIL]"),
    "id_card": (re.compile(rf"{_ND}(?:(?P<zh>{_ZH_ID})|{_US_SSN}){_NA}"), None, "[ID]"),
    "bank_card": (re.compile(rf"{_ND}(?:\d{{4}}[ -]?){{3}}\d{{1,7}}{_NA}"), luhn_ok, "[CARD]"),
    "phone": (re.compile(
        rf"{_ND}(?:"
        r"(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"  # zh mobile: 1[3-9]x xxxx xxxx, optional +86
        r"|(?:\(0\d{2,3}\)|0\d{2,3}-)[ -]?\d{7,8}"  # zh landline with its area code: 010-12345678, (0755) 1234567
        r"|\+[1-9]\d{0,2}(?:[ -.]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
        r"|(?:\(\d{3}\) ?|\d{3}[-.])\d{3}[-.]\d{4}"  # North American: (555) 123-4567, 555-123-4567
        rf"){_NA}"), _enough_digits, "[PHONE]"),
}


_NUMBER = re.compile(r"\d[\d ()-]{4}")  # the shortest phone, ID or card has 5 digits in a row or in groups


def _id_ok(m: re.Match) -> bool:
    return zh_id_ok(m.group("zh")) if m.group("zh") else True


def mask_pii(text: str, kinds: list[str]) -> tuple[str, Counter]:
    """`text` with each PII kind of `kinds` replaced by its mask, and how many of each were masked."""
    found: Counter = Counter()
    # Cheap scans first: most documents hold no '@' and no run of 5 digits, and then no pattern can match.
    has_at, has_number = "@" in text, _NUMBER.search(text) is not None
    for kind, (pattern, valid, mask) in PII.items():
        if kind not in kinds or not (has_at if kind == "email" else has_number):
            continue

        def sub(m: re.Match, kind=kind, valid=valid, mask=mask) -> str:
            ok = _id_ok(m) if kind == "id_card" else (valid is None or valid(m.group(0)))
            if not ok:
                return m.group(0)
            found[kind] += 1
            return mask

        text = pattern.sub(sub, text)
    return text, found
