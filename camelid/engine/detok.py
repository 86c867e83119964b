"""Incremental detokenization: a request's text as its tokens arrive, in whole characters only.

With a byte-level vocabulary a Chinese character or an emoji is often split over two or three tokens, so decoding
the tokens generated so far can end in half a character (shown as U+FFFD). Here each token is its raw bytes
(`TokenBytes`) and the text grows by what those bytes complete: the start of a character waits for the rest,
bytes that can never become a character (an invalid sequence the model sampled) are dropped, and so is a fragment
still incomplete when generation ends. The text only ever grows, so stream deltas are its successive suffixes and
concatenate to the final text.

The byte view is exact for the two families that decode by concatenating bytes: byte-level BPE (GPT-2, Llama 3,
Qwen, SmolLM2) and SentencePiece with byte fallback (Llama 2, Gemma, `camelid tok train`). It is checked against
`tokenizer.decode` on a probe text when the engine starts; any other tokenizer decodes the whole output at each
token and holds back trailing U+FFFD instead.
"""

from __future__ import annotations

import codecs
import json
import logging
import re

log = logging.getLogger("camelid")

PROBE = "Hi there, 世界！ naïve 🙂🚀\n\t x  y 分成为一组"
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character → byte: printable Latin-1 bytes stand for themselves, the other 68
    (controls, space, DEL, NBSP, soft hyphen) for the characters from U+0100 on, in byte order."""
    shown = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, extra = {}, 0
    for b in range(256):
        if b in shown:
            chars[chr(b)] = b
        else:
            chars[chr(0x100 + extra)] = b
            extra += 1
    return chars


class TokenBytes:
    """Each token id's raw bytes (`self[id]`; a special token's are its name), which special tokens the text skips,
    and how many leading spaces a decode strips (SentencePiece's dummy prefix). `table` is None when the tokenizer
    is not one of the byte-concatenating kinds."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table, self.skip, self.strip = None, frozenset(), 0
        try:
            built = _build(tokenizer)
        except Exception as e:  # an unusual tokenizer must not stop the engine: it decodes whole instead
            log.debug("detok: no byte table (%s: %s)", type(e).__name__, e)
            built = None
        if built is not None:
            self.table, self.skip, self.strip = built
            if not self._agrees_with_decode():
                log.info("detok: the tokenizer's decode differs from its tokens' bytes; decoding whole outputs")
                self.table, self.skip, self.strip = None, frozenset(), 0

    def __getitem__(self, token: int) -> bytes:
        if self.table is None:  # best effort: a token holding part of a character decodes to U+FFFD here
            return self.tokenizer.decode([token]).encode()
        return self.table[token] if 0 <= token < len(self.table) else b""

    def _agrees_with_decode(self) -> bool:
        ids = self.tokenizer.encode(PROBE, add_special_tokens=False)
        special = [i for i in (self.tokenizer.eos_token_id,) if isinstance(i, int)]
        ids = ids[:4] + special + ids[4:]
        detok = Detokenizer(self)
        text = "".join(detok.add(t) for t in ids)
        return text == self.tokenizer.decode(ids, skip_special_tokens=True)


def _build(tokenizer) -> tuple[list[bytes], frozenset[int], int] | None:
    """(bytes of every token id, the special ids decode skips, leading spaces it strips) for a fast tokenizer whose
    decoder concatenates bytes, read from that decoder's own steps; None for any other."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
    steps = spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") for s in steps]
    size = backend.get_vocab_size(with_added_tokens=True)
    pieces = [backend.id_to_token(i) for i in range(size)]
    special = frozenset(i for i, t in backend.get_added_tokens_decoder().items() if t.special)
    if "ByteLevel" in kinds:
        alphabet = byte_level_alphabet()

        def to_bytes(piece: str) -> bytes:
            # a piece outside the alphabet (an added token such as a Chinese word) is its own UTF-8, as in tokenizers
            try:
                return bytes(alphabet[c] for c in piece)
            except KeyError:
                return piece.encode()

        strip = 0
    elif set(kinds) <= {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"}:
        replace, strip, fused = [], 0, False
        for s in steps:
            if s["type"] == "Replace":
                replace.append((s["pattern"]["String"], s["content"]))
            elif s["type"] == "Metaspace":
                replace.append((s["replacement"], " "))
                strip = int(s.get("prepend_scheme", "always") != "never" and s.get("add_prefix_space", True))
            elif s["type"] == "Fuse":
                fused = True
            elif s["type"] == "Strip":
                if not fused or s["content"] != " " or s.get("stop", 0):
                    return None  # strips every token, or something else than leading spaces
                strip = s["start"]
        byte_fallback = "ByteFallback" in kinds

        def to_bytes(piece: str) -> bytes:
            m = _BYTE_PIECE.fullmatch(piece) if byte_fallback else None
            if m:
                return bytes([int(m.group(1), 16)])
            for old, new in replace:
                piece = piece.replace(old, new)
            return piece.encode()
    else:
        return None
    table = [b"" if p is None else p.encode() if i in special else to_bytes(p) for i, p in enumerate(pieces)]
    return table, special, strip


class Detokenizer:
    """One request's text: `add(token)` returns what that token adds to it (possibly "")."""

    def __init__(self, vocab: TokenBytes):
        self.vocab = vocab
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")  # holds an incomplete tail, drops invalid bytes
        self._strip = vocab.strip
        self._ids: list[int] = []  # only for tokenizers decoded whole
        self._text = ""

    def add(self, token: int) -> str:
        if self.vocab.table is None:
            self._ids.append(token)
            whole = self.vocab.tokenizer.decode(self._ids, skip_special_tokens=True).rstrip("\ufffd")
            new = whole[len(self._text) :]
            self._text += new
            return new
        data = b"" if token in self.vocab.skip else self.vocab[token]
        if self._strip and data:
            cut = min(self._strip, len(data) - len(data.lstrip(b" ")))
            data = data[cut:]
            self._strip = 0 if data else self._strip - cut
        return self._utf8.decode(data)
