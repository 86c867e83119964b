"""Dedup and decontamination for `camelid clean`, in stages that run over shards cleaned in parallel.

    first = first_of_equal(digests)              exact dedup: each document's first equal, over the whole corpus
    mh = MinHasher(0.8, 128, 5); sig = mh.signatures(texts)   a chunk's MinHash signatures (in the shard's worker)
    keys = mh.band_keys(signatures)              its LSH band keys (in the worker)
    buckets = [shared_buckets(keys[:, b]) for b in range(mh.bands)]    per band: sort, group (one task each)
    near_duplicates(buckets, signature, 0.8)     the greedy pass in document order: {doc: (kept doc, Jaccard)}
    bench = BenchmarkIndex({"mmlu/astronomy/0": "question ..."}, 13, 25);  bench("text") → None or the item shared

Near-duplicates: MinHash over the set of character shingles (`shingle` characters; needs no word segmentation,
so zh and en alike), with datasketch's "affine32" permutations and bit for bit its signatures, computed for a
chunk of documents at once in numpy: ~2.6x datasketch's own MinHash per document fed the same shingle hashes on
People's Daily (many short documents), ~1.5x on Shakespeare (a few long ones), and that was itself ~4x its default
per-shingle SHA-1. The bands are datasketch's MinHashLSH choice, tilted towards recall, and every candidate is
checked against the signatures, so the threshold means what it says.

Memory of the merge, the only state that grows with the corpus: 8 bytes of digest per document, one band's keys
at a time (8 bytes per document plus the sort), the documents in shared buckets, and a signature read from disk
per candidate checked. The bands are what large pipelines do (sort and group by band hash, as datatrove's MinHash
stages): memory no longer grows with a Python dict per kept document.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re

import numpy as np

from camelid.data.quality import HAN, spans_by_chars, units, window_hashes
from camelid.utils import require

_B = np.uint64(0x100000001B3)
_HAN = re.compile(f"[{HAN}]")


def digest(text: str) -> int:
    """The 8-byte BLAKE2b digest of a normalized text, as an int (exact dedup's key)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def first_of_equal(keys: np.ndarray) -> np.ndarray:
    """For each position, the position of the first equal key (itself when it is the first): exact dedup over the
    whole corpus as one stable sort, 16 bytes per document, instead of a dict grown document by document."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    first = np.empty(len(keys), dtype=np.int64)
    first[order] = np.repeat(order[starts], np.diff(np.r_[starts, len(keys)]))
    return first


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Distinct 32-bit hashes of the text's k-character shingles (the whole text when shorter than k), sorted."""
    h = np.sort(_shingles([text], k)[0])
    return h[np.r_[True, h[1:] != h[:-1]]] if len(h) else h


def _shingles(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The 32-bit hashes of every text's k-character shingles (repeats included), concatenated in text order, and
    the text each belongs to. One pass over all the texts' characters: a window is dropped when a text ends inside
    it; a text shorter than k is one shingle of its whole length (an empty one: a single 0)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    ends = np.cumsum(lengths)
    cps = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    h = cps[: max(len(cps) - k + 1, 0)].copy()
    for j in range(1, k):  # in place: fresh arrays per step cost more in page faults than the arithmetic
        h *= _B
        h += cps[j : len(cps) - k + 1 + j]
    inside = np.ones(len(h), dtype=bool)
    crossing = (ends[:, None] - np.arange(1, k)).ravel()  # windows starting 1..k-1 characters before an end
    inside[crossing[(crossing >= 0) & (crossing < len(h))]] = False
    windows = np.maximum(lengths - k + 1, 0)
    h, owner = h[inside], np.repeat(np.arange(len(texts)), windows)
    short = np.flatnonzero(lengths < k)
    if len(short):  # rare: each is one shingle of its whole text, put back in text order
        whole = []
        for t in short.tolist():
            value = 0
            for c in cps[ends[t] - lengths[t] : ends[t]].tolist():
                value = (value * int(_B) + c) & 0xFFFF_FFFF_FFFF_FFFF
            whole.append(value)
        at = np.searchsorted(owner, short)
        h, owner = np.insert(h, at, np.array(whole, dtype=np.uint64)), np.insert(owner, at, short)
    h ^= h >> np.uint64(32)
    return h.astype(np.uint32), owner


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes every input hash with it in the affine32 scheme)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


@functools.lru_cache(maxsize=8)
def _lsh_parameters(threshold: float, num_perm: int) -> tuple[np.ndarray, int, int]:
    """(permutations, bands, rows): datasketch's, computed once per process — its band choice integrates
    false-positive and false-negative curves for every split (~25 ms), which per shard was 10% of a clean."""
    ds = require("datasketch", "clean")
    permutations = ds.MinHash(num_perm=num_perm, seed=1, scheme="affine32").permutations
    # Bands tuned for recall (false negatives weigh 0.9): at 128 permutations and 0.8 a pair of similarity
    # 0.85 becomes a candidate 97% of the time (69% with the default 0.5/0.5); candidates are then checked.
    lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
    return permutations, lsh.b, lsh.r


class MinHasher:
    """MinHash signatures (uint32, bit for bit datasketch's affine32 scheme: h -> a*fmix32(h) + b mod 2^32, the
    minimum over the shingles) of texts' character shingles, and the LSH bands that find candidate pairs.
    Computed for many texts at once in numpy, `ROWS` shingles at a time so the (shingles x permutations) block
    stays in cache: one datasketch MinHash per text cost ~3x as much on short texts (per-call overhead)."""

    ROWS = 1024

    def __init__(self, threshold: float, num_perm: int, shingle: int):
        self.shingle, self.num_perm = shingle, num_perm
        permutations, self.bands, self.rows = _lsh_parameters(threshold, num_perm)
        self._a, self._b = (np.asarray(p, dtype=np.uint32) for p in permutations)

    def __call__(self, text: str) -> np.ndarray:
        return self.signatures([text])[0]

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(texts, num_perm) uint32."""
        out = np.full((len(texts), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        for start, end in spans_by_chars(texts, 1 << 18):
            h, owner = _shingles(texts[start:end], self.shingle)
            # Repeats do not move a minimum: drop them first (English repeats ~2/3 of its 5-char shingles). One
            # sort of (text, hash) keys, ~8x faster than np.unique's hash table on numpy 2.4; texts stay contiguous.
            key = np.sort((owner.astype(np.uint64) << np.uint64(32)) | h)
            key = key[np.r_[True, key[1:] != key[:-1]]]
            owner, h = (key >> np.uint64(32)).astype(np.int64) + start, _fmix32(key.astype(np.uint32))
            for s in range(0, len(h), self.ROWS):
                part, who = h[s : s + self.ROWS], owner[s : s + self.ROWS]
                values = part[:, None] * self._a + self._b  # wraps mod 2^32: the affine permutation
                cuts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]])
                rows = who[cuts]  # texts are contiguous, so each appears once per block
                out[rows] = np.minimum(out[rows], np.minimum.reduceat(values, cuts, axis=0))
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(documents, bands) uint64: one hash per band of `rows` signature values. Two documents share a key
        when their band is equal (a 64-bit collision only adds a candidate, which the signatures then reject)."""
        sig = signatures.reshape(len(signatures), self.num_perm)[:, : self.bands * self.rows].astype(np.uint64)
        keys = np.zeros((len(sig), self.bands), dtype=np.uint64)
        for j in range(self.rows):
            keys = keys * _B + sig[:, j :: self.rows][:, : self.bands] + np.uint64(1)
        return keys


def shared_buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One LSH band's buckets holding two or more documents: (members, bucket number of each), members in
    ascending order within a bucket. Singletons, nearly all buckets, never yield a candidate and are dropped here."""
    if not len(keys):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    bucket = np.repeat(np.arange(len(starts)), sizes)
    shared = sizes[bucket] >= 2
    return order[shared], bucket[shared]


def near_duplicates(
    buckets: list[tuple[np.ndarray, np.ndarray]], signature, threshold: float
) -> dict[int, tuple[int, float]]:
    """{document: (the earlier kept document it nearly repeats, estimated Jaccard)} from every band's shared
    buckets. Documents go in order; one is a near duplicate when a document kept before it shares a bucket with
    it and their signatures agree on >= threshold of their values (the best such one; ties: the earliest).

    This keeps the greedy rule of a streaming dedup rather than taking connected components: a chain A~B~C where
    C is far from A keeps C, since B, its only near neighbour, was dropped. `signature(i)` reads document i's."""
    if not buckets:
        return {}
    offset, members, ids = 0, [], []
    for m, b in buckets:  # bucket numbers made distinct across bands
        members.append(m)
        ids.append(b + offset)
        offset += int(b.max()) + 1 if len(b) else 0
    docs, bucket_ids = np.concatenate(members), np.concatenate(ids)
    if not len(docs):
        return {}
    order = np.lexsort((bucket_ids, docs))
    docs, bucket_ids = docs[order], bucket_ids[order]
    starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
    kept_in: dict[int, list[int]] = {}
    found: dict[int, tuple[int, float]] = {}
    for a, b in zip(starts, np.r_[starts[1:], len(docs)]):
        doc, mine = int(docs[a]), bucket_ids[a:b].tolist()
        candidates = sorted({c for k in mine for c in kept_in.get(k, ())})
        best, score = -1, -1.0
        if candidates:
            sig = signature(doc)
            for c in candidates:
                s = float(np.mean(signature(c) == sig))
                if s > score:
                    best, score = c, s
        if best >= 0 and score >= threshold:
            found[doc] = (best, score)
        else:
            for k in mine:
                kept_in.setdefault(k, []).append(doc)
    return found


class BenchmarkIndex:
    """The n-grams of benchmark items, over units (a CJK character or a word, lowercased, punctuation dropped).
    A document sharing any one of them is contaminated (GPT-3's rule). n is `n` units for items written mostly in
    words and `n_zh` for items mostly in Chinese characters (13 characters are a common phrase, not a question:
    ~25 match 13 words). Items shorter than their n go unchecked and are listed in `too_short`.
    Memory: ~16 bytes per n-gram of the items (MMLU: ~1M n-grams, 16 MB), and a 16 MB filter per n."""

    _MARK = np.uint64((1 << 24) - 1)

    def __init__(self, items: dict[str, str], n: int, n_zh: int):
        self.names = list(items)
        tokenized = [units(text) for text in items.values()]
        self.vocab = {u: i for i, u in enumerate(sorted({u for toks in tokenized for u in toks}))}
        self._rand = (
            np.random.default_rng(0).integers(0, 2**63, size=len(self.vocab) + 1, dtype=np.int64).view(np.uint64)
        )
        grams: dict[int, tuple[list, list]] = {}
        self.too_short = []
        for i, (toks, text) in enumerate(zip(tokenized, items.values())):
            han = len(_HAN.findall(text))
            size = n_zh if han >= len(toks) / 2 else n
            h = self._grams([self.vocab[u] for u in toks], size)
            if not len(h):
                self.too_short.append(self.names[i])
            keys, owners = grams.setdefault(size, ([], []))
            keys.append(h)
            owners.append(np.full(len(h), i, dtype=np.int64))
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for size, (keys, owners) in grams.items():
            k, o = np.concatenate(keys), np.concatenate(owners)
            if len(k):
                order = np.argsort(k)
                self.tables[size] = (k[order], o[order])
        self._shortest = min(self.tables, default=0)
        # One bit of filter per key's low bits: a window whose mark is unset cannot match, and is dismissed with one
        # memory access instead of a ~20-step binary search (MMLU: ~1M keys mark ~6% of the 16M slots).
        self._marks = {}
        for size, (keys, _) in self.tables.items():
            self._marks[size] = np.zeros(int(self._MARK) + 1, dtype=bool)
            self._marks[size][keys & self._MARK] = True

    def _grams(self, ids: list[int], n: int) -> np.ndarray:
        """Hashes of the n-windows of `ids` that hold no unit unknown to the benchmarks (id -1): those cannot match."""
        a = np.asarray(ids, dtype=np.int64)
        if len(a) < n:
            return np.zeros(0, np.uint64)
        h = window_hashes(self._rand[a], n, _B)
        unknown = np.concatenate([[0], np.cumsum(a < 0)])
        return h[(unknown[n:] - unknown[:-n]) == 0]

    def __call__(self, text: str) -> str | None:
        if not self.tables:
            return None
        ids = list(map(self.vocab.get, units(text), itertools.repeat(-1)))
        if len(ids) - ids.count(-1) < self._shortest:  # too few units the benchmarks know (most Chinese text)
            return None
        for n, (keys, owners) in self.tables.items():
            h = self._grams(ids, n)
            if not len(h):
                continue
            h = h[self._marks[n][h & self._MARK]]  # the few that may be an item's: a binary search each
            i = np.minimum(np.searchsorted(keys, h), len(keys) - 1)
            hit = np.flatnonzero(keys[i] == h)
            if len(hit):
                return f"shares a {n}-gram with {self.names[owners[i[hit[0]]]]}"
        return None
