"""Sentence encoders (sentence-transformers) and cross-encoders for reranking, loaded by catalog name,
folder or id. The catalog's all-MiniLM-L6-v2 works offline; any sentence-transformers model can stand in."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from camelid.hub import resolve_model
from camelid.utils import CamelidError, require


class Encoder:
    """Normalised embeddings, so inner product = cosine; token counts in the encoder's own tokenizer."""

    def __init__(self, name: str, batch: int = 64, device: str | None = None):
        st = require("sentence_transformers", "rag")
        self.name, self.batch = name, batch
        try:
            # trust_remote_code stays off: a model that needs its own code is refused, not run.
            self.model = st.SentenceTransformer(
                resolve_model(name, kind="encoder"), device=device or "cpu", trust_remote_code=False
            )
        except OSError as e:
            raise CamelidError(f"could not load the sentence encoder '{name}': {e}") from None
        self.dim = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.tokenizer = self.model.tokenizer

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        # verbose=False: counting a long section is not feeding it to the model, so no length warning
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def unknown_share(self, text: str) -> float:
        """Share of `text`'s tokens the encoder's vocabulary lacks ([UNK]): high for a language it never learned
        (all-MiniLM-L6-v2 reads most Chinese characters as [UNK]), whose texts it then finds all alike."""
        return self.unknown_shares([text])[0]

    def unknown_shares(self, texts: list[str]) -> list[float]:
        """`unknown_share` of each text, tokenized in one batch."""
        if not texts:
            return []
        unk = self.tokenizer.unk_token_id
        batch = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [sum(i == unk for i in ids) / len(ids) if ids and unk is not None else 0.0 for ids in batch]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts, batch_size=self.batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)


@lru_cache(maxsize=4)
def encoder(name: str, batch: int = 64) -> Encoder:
    """One loaded copy per encoder name in a process (a server answering several knowledge bases shares it)."""
    return Encoder(name, batch)


class Reranker:
    """A cross-encoder scoring (question, passage) pairs jointly: slower than the bi-encoder, better ordering."""

    def __init__(self, name: str, device: str | None = None):
        st = require("sentence_transformers", "rag")
        try:
            self.model = st.CrossEncoder(
                resolve_model(name, kind="encoder"), device=device or "cpu", trust_remote_code=False
            )
        except OSError as e:
            raise CamelidError(f"could not load the cross-encoder '{name}': {e}") from None

    def scores(self, question: str, passages: list[str]) -> list[float]:
        if not passages:
            return []
        return [float(s) for s in self.model.predict([(question, p) for p in passages], show_progress_bar=False)]


@lru_cache(maxsize=2)
def reranker(name: str) -> Reranker:
    return Reranker(name)
