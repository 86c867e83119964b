"""A character n-gram language model with interpolated Kneser-Ney smoothing, for `camelid clean`'s perplexity filter.

    lm = CharNgramLM.train(reference_texts, order=5)
    lm.perplexity("一段通顺的中文。")      # low on text like the reference, high on gibberish

Why our own (about 200 lines of numpy) rather than a library, measured on 2 cores:
- KenLM scores fast (4.3M chars/s) and its `lmplz` trains a 5-gram on 1.4M chars in 2.6 s, but `lmplz` is not on
  PyPI: it builds from the kenlm sdist with cmake and Boost headers from apt (~75 s), and the `kenlm` Python
  module builds from source another ~85 s. A pip extra cannot provide that; a user with KenLM can still train
  on the same text and compare.
- nltk.lm's KneserNeyInterpolated (pure Python) scored 10 chars/s after a 12 s fit on 180k chars.
This model trains on 5M chars in ~5 s and scores 2-3M chars/s (benchmarks/clean_throughput.py has the numbers).

The model (Chen & Goodman 1998, interpolated Kneser-Ney with one discount per order):

    P_n(w | h) = max(c(hw) - D_n, 0) / c(h)  +  D_n · N1+(h•) / c(h) · P_{n-1}(w | h')
    P_k(w | h) = same with continuation counts N1+(•hw) in place of c(hw), for 1 < k < n
    P_1(w)     = max(N1+(•w) - D_1, 0) / N1+(••)  +  D_1 · |types| / N1+(••) · 1 / V

V counts the reference's characters, EOS and one UNK standing for every other character; h' drops the first
character of h; a context never seen falls through to the lower order;
D_k = n1 / (n1 + 2 n2) from the counts-of-counts (0.5 when a count-of-count is 0). Characters are lowercased
and digits mapped to 0 first (CCNet's normalization). N-grams are keyed by a 64-bit hash (a random 64-bit value
per character, combined polynomially), so the tables are sorted uint64 arrays searched with numpy: memory is
~30 bytes per distinct n-gram of the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from camelid.data.quality import spans_by_chars

_B = np.uint64(0x100000001B3)  # FNV prime: the polynomial's base (odd, so no low bits are lost)
_DIGIT = re.compile(r"\d")
BOS, EOS, UNK = 1, 2, 0
_BMP = 1 << 16


def _prep(text: str) -> str:
    return _DIGIT.sub("0", text.lower())


class _Table:
    """A uint64 key → float values map looked up many keys at a time: open addressing with linear probing in one
    numpy array at load <= 0.5, key 0 marking an empty slot (a real key 0 is stored as 1: one more hash collision).
    A slot is one row, the key and its values side by side (32 bytes: one cache line), so a lookup costs one
    random memory access per probe; with keys and values in separate arrays it cost one per array, and with a
    binary search over sorted keys ~22."""

    def __init__(self, keys: np.ndarray, *values: np.ndarray):
        size = 1 << max(4, (2 * len(keys)).bit_length())
        self.mask = np.uint64(size - 1)
        self.slots = np.zeros((size, 1 + len(values)), np.uint64)  # [key, values as float64 bits...]
        columns = np.stack([np.asarray(v, np.float64) for v in values], axis=1).view(np.uint64)
        keys = np.maximum(keys, np.uint64(1))
        pending, slot = np.arange(len(keys)), keys & self.mask
        while len(pending):  # each round, the first pending key aimed at each free slot takes it; the rest move on
            free = self.slots[slot[pending], 0] == 0
            targets, first = np.unique(slot[pending[free]], return_index=True)
            winners = pending[free][first]
            self.slots[targets, 0] = keys[winners]
            self.slots[targets, 1:] = columns[winners]
            placed = np.zeros(len(keys), bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            slot[pending] = (slot[pending] + np.uint64(1)) & self.mask

    def get(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(q), values) float64: the values stored at each of q, 0 where q is not stored; and which are."""
        q = np.maximum(q, np.uint64(1))
        slot = q & self.mask
        rows = np.take(self.slots, slot, axis=0)  # ~5x faster than self.slots[slot] for rows
        # The first probe, over every key, without index bookkeeping: ~70% of keys end here.
        found = rows[:, 0] == q
        active = np.flatnonzero((rows[:, 0] != 0) & ~found)
        rows[~found] = 0  # uint64 0 is the bits of 0.0
        out = rows[:, 1:]
        while len(active):
            slot[active] = (slot[active] + np.uint64(1)) & self.mask
            rows = np.take(self.slots, slot[active], axis=0)
            hit = rows[:, 0] == q[active]
            out[active[hit]] = rows[hit, 1:]
            found[active[hit]] = True
            active = active[(rows[:, 0] != 0) & ~hit]
        return out.view(np.float64), found


def _spread(keys: np.ndarray, subset: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values (aligned with the sorted `subset` of `keys`) placed at their keys' positions, 0 elsewhere."""
    out = np.zeros(len(keys))
    out[np.searchsorted(keys, subset)] = values
    return out


class CharNgramLM:
    SUBSET = 0.8  # look up only the positions the order below found when they are at most this share

    def __init__(self, order: int, codepoints: np.ndarray, rand: np.ndarray):
        self.order = order
        self.codepoints = codepoints  # sorted code points of the reference's characters; id = index + 3
        self.rand = rand  # a random 64-bit value per id: the hash's alphabet
        # the ids of the Basic Multilingual Plane looked up directly (a binary search per character cost 6% of scoring)
        bmp = codepoints[codepoints < _BMP]
        self._bmp_ids = np.full(_BMP, UNK, dtype=np.int64)
        self._bmp_ids[bmp] = np.arange(len(bmp)) + 3
        # Per order k (index k-1), one table keyed by k-gram: (its count: raw at the top order, else continuation;
        # and, as the context h of order k+1, the denominator and N1+(h•)). One lookup per position and order serves
        # both roles (the context of position i is the k-gram ending at i-1), half the lookups of two tables.
        self.tables: list[_Table] = []
        self.discounts: list[float] = []
        self._by_id: tuple[np.ndarray, np.ndarray] | None = None  # order 1's (values, found) per id, on first use
        self.unigram_denominator, self.types = 1.0, 1

    # ------------------------------------------------------------------------------------ ids and hashes

    def _ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every text as ids, each padded with order-1 BOS before and EOS after, concatenated; and a mask of the
        positions that are predicted (the characters and EOS). One encode and one search for all texts."""
        pad = self.order - 1
        prepped = [_prep(t) for t in texts]
        lengths = np.array([len(t) for t in prepped], dtype=np.int64)
        cps = np.frombuffer("".join(prepped).encode("utf-32-le"), dtype=np.uint32)
        ids = self._bmp_ids[np.minimum(cps, _BMP - 1)]
        beyond = np.flatnonzero(cps >= _BMP)
        if len(beyond) and len(self.codepoints):  # rare characters (emoji, Han extension B…): a binary search
            i = np.minimum(np.searchsorted(self.codepoints, cps[beyond]), len(self.codepoints) - 1)
            ids[beyond] = np.where(self.codepoints[i] == cps[beyond], i + 3, UNK)
        # text j's characters shift right by the pads and EOS of the texts before it, plus its own pads
        doc = np.repeat(np.arange(len(texts)), lengths)
        out = np.full(len(cps) + len(texts) * (pad + 1), BOS, dtype=np.int64)
        out[np.arange(len(cps)) + doc * (pad + 1) + pad] = ids
        eos = np.cumsum(lengths) + np.arange(1, len(texts) + 1) * (pad + 1) - 1
        out[eos] = EOS
        predicted = out != BOS
        return out, predicted

    def _hashes(self, ids: np.ndarray) -> list[np.ndarray]:
        """H[k-1][i] = hash of the k-gram ending at position i (garbage for i < k-1, never read there)."""
        r = self.rand[ids]
        hashes = [r]
        for _ in range(1, self.order):
            prev = hashes[-1]
            h = r.copy()
            h[1:] += prev[:-1] * _B
            hashes.append(h)
        return hashes

    # ------------------------------------------------------------------------------------------- training

    @classmethod
    def train(cls, texts: Iterable[str], order: int = 5, seed: int = 0) -> CharNgramLM:
        texts = list(texts)
        cps = np.unique(np.frombuffer("".join(_prep(t) for t in texts).encode("utf-32-le"), dtype=np.uint32))
        rand = np.random.default_rng(seed).integers(0, 2**63, size=len(cps) + 3, dtype=np.int64).view(np.uint64)
        lm = cls(order, cps, rand)
        ids, predicted = lm._ids(texts)
        hashes = lm._hashes(ids)
        pos = np.flatnonzero(predicted)
        # Top order: raw counts. Lower orders: continuation counts, i.e. the distinct k+1-grams ending in the k-gram.
        keys, first, counts = np.unique(hashes[order - 1][pos], return_index=True, return_counts=True)
        at = pos[first]  # a position where each distinct n-gram ends
        tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(keys, counts, at)]
        for k in range(order - 1, 0, -1):
            suffix = hashes[k - 1][at]  # the k-gram inside each distinct (k+1)-gram, ending at the same position
            keys, first, counts = np.unique(suffix, return_index=True, return_counts=True)
            at = at[first]
            tables.append((keys, counts, at))
        tables.reverse()  # index k-1 → order k
        contexts = [(np.zeros(0, np.uint64), np.zeros(0), np.zeros(0))]  # index k-1: the contexts order k uses
        for k, (keys, counts, at) in enumerate(tables, 1):
            n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
            lm.discounts.append(float(n1 / (n1 + 2 * n2)) if n1 and n2 else 0.5)
            if k == 1:
                lm.unigram_denominator, lm.types = float(counts.sum()), len(keys)
                continue
            ctx = hashes[k - 2][at - 1]  # the (k-1)-gram before each k-gram's last character
            ctx_keys, inverse = np.unique(ctx, return_inverse=True)
            denominator = np.bincount(inverse, weights=counts)
            followers = np.bincount(inverse).astype(np.float64)
            contexts.append((ctx_keys, denominator, followers))
        contexts.append((np.zeros(0, np.uint64), np.zeros(0), np.zeros(0)))  # the top order is nobody's context
        for (keys, counts, _), (ctx_keys, denominator, followers) in zip(tables, contexts[1:]):
            merged = np.union1d(keys, ctx_keys)
            lm.tables.append(
                _Table(
                    merged,
                    _spread(merged, keys, counts.astype(np.float64)),
                    _spread(merged, ctx_keys, denominator),
                    _spread(merged, ctx_keys, followers),
                )
            )
        return lm

    # -------------------------------------------------------------------------------------------- scoring

    def log_probs(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Natural-log probability of every predicted position of `texts` (characters and EOS), and the index of
        the text each belongs to."""
        ids, predicted = self._ids(texts)
        hashes = self._hashes(ids)
        pos = np.flatnonzero(predicted)
        # k-1 → (count, denominator, N1+) per position. A k-gram absent from the reference has no longer n-gram
        # ending where it ends present either (every suffix of a stored n-gram, and the context of every stored
        # context, is stored one order down), so an order looks up only where the order below found its key, once
        # that is few enough to pay for the gather and scatter (Chinese news: 43% at order 3, 18% at 5; English
        # verse: 94% at 5).
        # Order 1 by id: a unigram's key is its id's random value, so its row is looked up once per id, not per position
        if self._by_id is None:
            self._by_id = self.tables[0].get(self.rand)
        values, found = self._by_id[0][ids], self._by_id[1][ids]
        looked_up, at = [values.T], np.flatnonzero(found)
        at = None if len(at) > self.SUBSET * len(ids) else at
        for table, h in zip(self.tables[1:], hashes[1:]):
            if at is None:
                values, found = table.get(h)
                at = np.flatnonzero(found)
            else:
                part, found = table.get(h[at])
                values = np.zeros((len(ids), part.shape[1]))
                values[at] = part
                at = at[found]
            looked_up.append(values.T)
            at = None if len(at) > self.SUBSET * len(ids) else at
        # Every position from 1 on (position 0 is a BOS pad, never predicted), so that a position's context, the
        # n-gram ending one before it, is the same arrays shifted by one: slices, where gathers at pos - 1 cost more.
        d1 = self.discounts[0]
        vocab = len(self.codepoints) + 2  # the reference's characters, EOS, and UNK for any other character
        p = (np.maximum(looked_up[0][0][1:] - d1, 0) + d1 * self.types / vocab) / self.unigram_denominator
        for k in range(2, self.order + 1):
            count = looked_up[k - 1][0][1:]
            denominator, followers = looked_up[k - 2][1][:-1], looked_up[k - 2][2][:-1]
            found = denominator > 0  # a context seen in the reference
            d = self.discounts[k - 1]
            p = np.where(found, (np.maximum(count - d, 0) + d * followers * p) / np.where(found, denominator, 1.0), p)
        p = p[pos - 1]
        doc = np.cumsum(~predicted)[pos]  # BOS pads seen so far: order-1 per text
        return np.log(p), doc // (self.order - 1) - 1

    def perplexities(self, texts: list[str], batch_chars: int = 1 << 18) -> np.ndarray:
        """Per-character perplexity of each text (EOS included, so an empty text has a finite one). Texts are
        scored ~batch_chars characters at a time: scoring holds ~200 bytes per character in numpy temporaries,
        and tables' cache lines stay warm (a quarter million characters scored 20% faster than a million)."""
        out = []
        for start, end in spans_by_chars(texts, batch_chars):
            logp, doc = self.log_probs(texts[start:end])
            total = np.bincount(doc, weights=logp, minlength=end - start)
            out.append(np.exp(-total / np.bincount(doc, minlength=end - start)))
        return np.concatenate(out) if out else np.zeros(0)

    def perplexity(self, text: str) -> float:
        return float(self.perplexities([text])[0])
