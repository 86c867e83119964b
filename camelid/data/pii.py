"""PII masking for `camelid clean`: e-mail addresses, phone numbers, ID numbers and bank cards, zh and en formats.

    text, found = mask_pii(text, ["email", "phone", "id_card", "bank_card"])   # found: Counter of kinds masked

A number is masked only when it has its kind's shape and check, and stands alone as that kind would:

- shape: mainland mobiles start with an assigned prefix (13x, 15x, 18x, ...) and group 3-4-4; landlines carry an
  area code (0xx or 0xxx) and a local number that starts 2-9; North American numbers have a 2-9 area code and
  exchange; international numbers start with '+' and hold 9-15 digits in groups; cards are 14-19 digits, unbroken
  or grouped as cards are printed (4-4-4-4[-3], 4-6-5);
- check: the check digit of a mainland resident ID, the Luhn digit and a known issuer prefix (IIN) of a card;
- alone: not part of a longer token (a letter, digit or '+' beside it, a decimal point, a sign or hyphen:
  275.43397884615385, -16666579378, 978-7-111-54742-6), no currency or unit around it (13800000000元,
  ¥4111111111111111), and no arithmetic around it (7408 × 2079889 = 15407817712, "the answer is ...").

Kinds run in the order of `PII` so that longer numbers are claimed first: an 18-digit ID is never read as a card,
a card never as a phone. Patterns expect normalized text (NFKC: full-width digits already ASCII).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

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


# Issuer prefixes of the card networks (ISO/IEC 7812): Visa 4; Mastercard 51-55 and 2221-2720; Maestro and others
# 50, 56-59; Amex 34, 37; Diners 300-305, 36, 38, 39; JCB 3528-3589; UnionPay 62 and Discover 6011, 64, 65 (all of
# 6). A number starting 0, 1, 7, 8 or 9 (ISBN-13 starts 978/979) is no payment card.
_IIN = re.compile(r"4|5|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3(?:0[0-5]|[4678]|9|5(?:2[89]|[3-8]\d))|6")


def card_ok(number: str) -> bool:
    """A payment card number: a known issuer prefix, that network's length, and the Luhn digit. Lengths: Amex 15,
    Diners 14-19, everyone else 16-19 (13-digit Visa cards are long gone; EAN-13 barcodes are not)."""
    digits = re.sub(r"\D", "", number)
    if _IIN.match(digits) is None or not luhn_ok(digits):
        return False
    if digits[:2] in ("34", "37"):
        return len(digits) == 15
    return 14 <= len(digits) <= 19 if digits[:2] in ("30", "36", "38", "39") else 16 <= len(digits) <= 19


def _phone_ok(m: re.Match) -> bool:
    if m.group("intl") is None:
        return True
    digits = re.sub(r"\D", "", m.group(0))
    if not 9 <= len(digits) <= 15:  # E.164 allows 15; fewer than 9 is a signed figure (+12 345 678)
        return False
    if "." in m.group(0):  # dots as separators: +33.1.23.45.67.89, not a signed decimal or +123.456.789
        groups = m.group(0)[1:].split(".")
        return (
            len(groups) >= 3 and not any(c in m.group(0) for c in " -()") and not all(len(g) == 3 for g in groups[1:])
        )
    return True


def _id_ok(m: re.Match) -> bool:
    return zh_id_ok(m.group("zh")) if m.group("zh") else True


# Boundaries are ASCII letters/digits only: Chinese writes numbers right after characters (手机13812345678).
_ND = r"(?<![0-9A-Za-z+_])"  # no ASCII letter, digit, '_' or '+' just before: never a match inside a longer token
_NA = r"(?![0-9A-Za-z_])"  # and none just after
_ZH_ID = r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
_US_SSN = r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}"
_ZH_MOBILE = r"1(?:3\d|4[5-9]|5[0-35-9]|6[2567]|7[0-8]|8\d|9[0-35-9])"  # the prefixes assigned to mobile networks
_ZH_AREA = r"0(?:10|2\d|[3-9]\d\d)"  # Beijing 010, the big cities 02x, everywhere else 0xxx

# kind → (pattern, validator or None, mask)
PII: dict[str, tuple[re.Pattern, Callable[[re.Match], bool] | None, str]] = {
    "email": (
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
            r"\.(?!(?:png|jpe?g|gif|svg|webp|bmp|ico)\b)[A-Za-z]{2,}(?![A-Za-z0-9-]|:[\w/~])"
        ),  # not icon@2x.png, git@host:repo
        None,
        "[EMAIL]",
    ),
    "id_card": (re.compile(rf"{_ND}(?:(?P<zh>{_ZH_ID})|{_US_SSN}){_NA}"), _id_ok, "[ID]"),
    "bank_card": (
        re.compile(
            rf"{_ND}(?:\d{{14,19}}"
            r"|\d{4}(?P<s4>[ -])\d{4}(?P=s4)\d{4}(?P=s4)\d{4}(?:(?P=s4)\d{1,3})?"  # 4-4-4-4, 4-4-4-4-3
            rf"|\d{{4}}(?P<s6>[ -])\d{{6}}(?P=s6)\d{{4,5}}){_NA}"
        ),  # Amex 4-6-5, Diners 4-6-4
        lambda m: card_ok(m.group(0)),
        "[CARD]",
    ),
    "phone": (
        re.compile(
            rf"{_ND}(?:"
            rf"(?:(?:\+|00)86[ -]?)?{_ZH_MOBILE}(?P<ms>[ -]?)\d{{4}}(?P=ms)\d{{4}}"  # 138 1234 5678, +86 ...
            rf"|(?:\({_ZH_AREA}\) ?|{_ZH_AREA}-)[2-9]\d{{6,7}}(?:-\d{{1,5}})?"  # 010-62751234, (0755) 2345678-801
            r"|(?P<intl>\+[1-9]\d{0,2}(?:[ .-]\(?\d{1,8}\)?| ?\(\d{1,5}\)){1,6}|\+[1-9]\d{9,13})"  # +44 20 7946 0958
            r"|(?:1[ .-])?(?:\([2-9]\d\d\) ?[2-9]\d\d-|[2-9]\d\d(?P<ns>[.-])[2-9]\d\d(?P=ns))\d{4}"  # (415) 555-2671
            rf"){_NA}"
        ),
        _phone_ok,
        "[PHONE]",
    ),
}

# A number joined to more of a longer token is part of that token: a decimal (275.43397884615385), a signed or
# hyphenated number (-16666579378, 978-7-111-54742-6, ORD-4358124074789841, 4111111111111111-A), a path segment
# (shards/13812345678/), a ratio (13812345678:1), or a number beside a short group after a comma or slash
# (3,14159265358979; 4111111111111111/2024). A long number after a comma or slash is a list:
# 13812345678,13912345678 and 0755-23456789/13812345678 are two phones each.
_JOINED_BEFORE = re.compile(r"(?:\d\.|-|[A-Za-z]/|(?<!\d)\d{1,4}[,/])$")
_JOINED_AFTER = re.compile(r"\.\d|-[0-9A-Za-z]|/[A-Za-z]|:\d|[,/]\d{1,4}(?!\d)")
# Money and quantities: a currency before, a currency or unit after, an ordinal (第13812345678号).
_QUANTITY_BEFORE = re.compile(r"(?:[$¥€£₹第]|(?<![A-Za-z])(?:rmb|cny|usd|us\$|hk\$|eur))\s?$", re.I)
_UNIT_AFTER = re.compile(
    r"\s?(?:[元圆块角万亿%‰円倍天米吨]|人次|美元|欧元|英镑|日元|港元"
    r"|(?:yuan|rmb|cny|usd|eur|dollars?|euros?|bytes?|tokens?|[kmgt]b|km|kg|(?:milli|micro|nano)?seconds?)\b)",
    re.I,
)
# Arithmetic: an operator next to the number, or an answer word before it. '/' is left out on purpose: Chinese
# pages list two phones as 0755-23456789/13812345678.
_OPERAND_BEFORE = re.compile(
    r"(?:[\d)!]\s*(?:[+*×÷^=]|\*\*)|\d\s+[-x]\s+|等于|乘以|除以|加上|减去|(?:结果|答案|总和)[是为]?"
    r"|\b(?:equals?|sum|product|total|result|answer|quotient|difference|remainder)\b(?: of [^.\n]{0,40}?)?"
    r"(?: (?:is|was|will be|would be|comes to))?)\s*[:：=]?\s*$",
    re.I,
)
_OPERAND_AFTER = re.compile(r"\s*(?:[+*×÷^=]|\s-\s)\s*[\d(]")


def _alone(m: re.Match) -> bool:
    """Whether the number `m` stands on its own: not joined to more digits, not an amount, not an operand."""
    text, start, end = m.string, m.start(), m.end()
    before = text[max(0, start - 48) : start]
    after = text[end : end + 12]
    return not (
        _JOINED_BEFORE.search(before)
        or _JOINED_AFTER.match(after)
        or _QUANTITY_BEFORE.search(before)
        or _UNIT_AFTER.match(after)
        or _OPERAND_BEFORE.search(before)
        or _OPERAND_AFTER.match(after)
    )


# The shortest phone, ID or card has 9 digits; with up to two separator characters between neighbours.
_NUMBER = re.compile(r"\d(?:[ ().-]{0,2}\d){8}")


def mask_pii(text: str, kinds: list[str]) -> tuple[str, Counter]:
    """`text` with each PII kind of `kinds` replaced by its mask, and how many of each were masked."""
    found: Counter = Counter()
    # Cheap scans first: most documents hold no '@' and no run of 9 digits, and then no pattern can match.
    has_at, has_number = "@" in text, _NUMBER.search(text) is not None
    for kind, (pattern, valid, mask) in PII.items():
        if kind not in kinds or not (has_at if kind == "email" else has_number):
            continue

        def sub(m: re.Match, kind=kind, valid=valid, mask=mask) -> str:
            if valid is not None and not (valid(m) and _alone(m)):
                return m.group(0)
            found[kind] += 1
            return mask

        text = pattern.sub(sub, text)
    return text, found
