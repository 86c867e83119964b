"""Sentence encoders (sentence-transformers), loaded by catalog name, folder or id. The catalog's
multilingual-e5-small (Chinese and English), its static distillation multilingual-e5-small-static and
all-MiniLM-L6-v2 (English) work offline; any sentence-transformers model can stand in.

A static encoder (a StaticEmbedding module: a vector per token, camelid/static_encoder.py) is run here directly: a
text's vector is the mean of its tokens' rows, from one tokenization that also gives the [UNK] share, where
sentence-transformers would tokenize again for each."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import numpy as np

from camelid.hub import entry_of, resolve_model
from camelid.utils import CamelidError, fast_bf16, quiet_transformers, require

DEFAULT_MIN_SIMILARITY = 0.35  # for an encoder the catalog has not measured
BF16_FROM = 8  # texts in one call from which bf16 is used (where it is at all)


class Encoder:
    """Normalised embeddings, so inner product = cosine; token counts in the encoder's own tokenizer."""

    def __init__(self, name: str, batch: int = 64, device: str | None = None, dtype: str = "auto"):
        st = require("sentence_transformers", "rag")
        self.name, self.batch = name, batch
        folder = resolve_model(name, kind="encoder")
        try:
            # trust_remote_code stays off: a model that needs its own code is refused, not run.
            with quiet_transformers():
                self.model = st.SentenceTransformer(folder, device=device or "cpu", trust_remote_code=False)
        except OSError as e:
            raise CamelidError(f"could not load the sentence encoder '{name}': {e}") from None
        entry = entry_of(folder)
        self.min_similarity = float(entry.get("min_similarity", DEFAULT_MIN_SIMILARITY))
        # e5 scores Chinese texts closer together than English ones: questions with CJK characters need more
        self.min_similarity_cjk = float(entry.get("min_similarity_cjk", self.min_similarity))
        # e5-style encoders were trained with "query: " / "passage: " prefixes; their config names them
        self.prompts = {role: role for role in ("query", "passage") if role in (self.model.prompts or {})}
        self.bf16 = dtype == "bfloat16" or (dtype == "auto" and fast_bf16(self.model.device.type))
        self.dim = int(
            self.model.get_embedding_dimension()
            if hasattr(self.model, "get_embedding_dimension")
            else self.model.get_sentence_embedding_dimension()
        )
        seq = self.model.max_seq_length
        self.max_tokens = int(seq) if seq and seq != float("inf") else None  # None: any length (a static encoder)
        self.tokenizer = self.model.tokenizer
        # a static encoder: its token table, read directly (see the module's docstring)
        static = type(self.model[0]).__name__ == "StaticEmbedding"
        self.table = self.model[0].embedding.weight.detach().float().numpy() if static else None
        if self.table is not None:
            from transformers import AutoTokenizer

            # the module holds a bare `tokenizers` one; camelid's distilled folders carry the same as an HF tokenizer
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.prompts = {}

    def count_tokens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self._ids(texts)]

    def unknown_share(self, text: str) -> float:
        """Share of `text`'s tokens the encoder's vocabulary lacks ([UNK]): high for a language it never learned
        (all-MiniLM-L6-v2 reads most Chinese characters as [UNK]), whose texts it then finds all alike."""
        return self.unknown_shares([text])[0]

    def unknown_shares(self, texts: list[str]) -> list[float]:
        """`unknown_share` of each text, tokenized in one batch."""
        if not texts:
            return []
        return self._unknown(self._ids(texts))

    def _ids(self, texts: list[str]) -> list[list[int]]:
        # verbose=False: counting a long section is not feeding it to the model, so no length warning
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def _unknown(self, batch: list[list[int]]) -> list[float]:
        unk = self.tokenizer.unk_token_id
        return [sum(i == unk for i in ids) / len(ids) if ids and unk is not None else 0.0 for ids in batch]

    def encode_passages(self, texts: list[str]) -> tuple[np.ndarray, list[float]]:
        """`encode(texts)` and `unknown_shares(texts)`, from one tokenization where the encoder is static."""
        if self.table is None:
            return self.encode(texts), self.unknown_shares(texts)
        ids = self._ids(texts)
        return self._static(ids), self._unknown(ids)

    def _static(self, batch: list[list[int]]) -> np.ndarray:
        """The normalised mean of each text's token rows: what StaticEmbedding + Normalize compute (a gather and a
        segmented sum; texts without tokens get the zero vector, as there)."""
        lengths = np.array([len(ids) for ids in batch])
        sums = np.zeros((len(batch), self.dim), dtype=np.float32)
        full = np.flatnonzero(lengths)
        if len(full):
            rows = self.table[np.fromiter((i for ids in batch for i in ids), dtype=np.int64, count=lengths.sum())]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[full]
            sums[full] = np.add.reduceat(rows, starts, axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return sums / np.maximum(norms, 1e-12)  # the mean's scale cancels in the normalisation

    def encode(self, texts: list[str], role: str = "passage", progress: bool = False) -> np.ndarray:
        """Unit vectors for `texts`, each a "query" (a question) or a "passage" (a chunk of a document)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.table is not None:
            return self._static(self._ids(texts))
        import torch

        # autocast keeps LayerNorm and softmax in float32 and runs the matmuls in bfloat16. Only for batches: one
        # question took 50-140 ms in bf16 against ~45 ms in float32 on CPU (oneDNN prepares kernels per new shape).
        bf16 = self.bf16 and len(texts) >= BF16_FROM
        amp = torch.autocast(self.model.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp, torch.inference_mode():
            vecs = self.model.encode(
                texts,
                prompt_name=self.prompts.get(role),
                batch_size=self.batch,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(vecs.float().cpu().numpy(), dtype=np.float32)


def encoder(name: str, batch: int = 64, dtype: str = "auto") -> Encoder:
    """One loaded copy per encoder name in a process (a server answering several knowledge bases shares it)."""
    return _loaded(name, batch, dtype)  # positional, so encoder("x") and encoder("x", 64) are one cache entry


@lru_cache(maxsize=4)
def _loaded(name: str, batch: int, dtype: str) -> Encoder:
    return Encoder(name, batch, dtype=dtype)
