"""A static sentence encoder distilled from a transformer one: a vector per vocabulary token, so embedding a text is
a lookup and a mean instead of a forward through every layer (People's Daily: ~0.2 MB/s of `kb add` on 2 cores
against ~0.01 with multilingual-e5-small itself; benchmarks/RESULTS.md, knowledge-base retrieval).

    distill(teacher_folder, out, dims=256)    # out: a sentence-transformers folder (StaticEmbedding, Normalize)

The recipe is model2vec's (Tulkens & van Dongen, 2024), written here against the teacher's own modules:
1. every token of the teacher's vocabulary goes through the teacher alone, framed by its special tokens
   ([CLS] t [SEP]), and is pooled as the teacher pools a sentence (mean pooling for e5);
2. the vectors are centred and reduced by PCA to `dims` (model2vec found 256 better than keeping all: PCA drops
   the directions every token shares);
3. each row is weighted by SIF, a / (a + p(token)), so frequent tokens count little in a text's mean. p is the
   tokenizer's own unigram probability where it has one (SentencePiece Unigram: e5, XLM-R), else Zipf's law over
   the token ids (BPE and WordPiece vocabularies are stored roughly in frequency order). Special tokens weigh 0.
The folder also carries the teacher's tokenizer files (token counts and the [UNK] rule read them) and
camelid_distilled.json (teacher, settings, time).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np

from camelid.utils import CamelidError, atomic_dir, fast_bf16, log, quiet_transformers, require

DIMS = 256
SIF = 1e-4  # model2vec's default; with 1e-3 or 1e-5 dense retrieval found fewer English passages (RESULTS.md)
PCA_ROWS = 65_536  # the principal axes are fitted on an even sample of this many token vectors


def distill(
    teacher: str, out: Path, dims: int = DIMS, sif: float = SIF, batch: int = 2048, bf16: bool | None = None
) -> dict:
    """Write the static encoder distilled from the sentence-transformers folder `teacher` into the folder `out`,
    which appears whole or not at all; returns what camelid_distilled.json records."""
    with atomic_dir(Path(out)) as tmp:
        return distill_into(teacher, tmp, dims, sif, batch, bf16)


def distill_into(
    teacher: str, folder: Path, dims: int = DIMS, sif: float = SIF, batch: int = 2048, bf16: bool | None = None
) -> dict:
    """`distill`, written into an existing (empty) folder: the catalog's pull gives it its own temporary one.
    bf16: run the teacher in bfloat16 (None: where the CPU has it natively; with AMX the 250k tokens of e5 take ~1
    minute on 2 cores). The catalog's thresholds were measured on a bf16 distillation."""
    st = require("sentence_transformers", "rag")
    modules = _modules()
    with quiet_transformers():
        model = st.SentenceTransformer(teacher, device="cpu", trust_remote_code=False)
    if not isinstance(model[0], modules.Transformer):
        raise CamelidError(f"'{teacher}' is not a transformer sentence encoder: nothing to distill")
    tokenizer = model[0].tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise CamelidError(f"'{teacher}' has no fast (tokenizer.json) tokenizer, which a static encoder needs")
    started = time.time()
    vectors = token_vectors(model, batch, fast_bf16("cpu") if bf16 is None else bf16)
    special = np.zeros(len(vectors), dtype=bool)
    special[[i for i in tokenizer.all_special_ids if i < len(vectors)]] = True
    reduced = pca(vectors, special, dims)
    p, kind = token_probabilities(tokenizer, len(vectors), special)
    weights = sif_weights(p, sif)
    table = (reduced * weights[:, None]).astype(np.float32)
    record = {
        "teacher": str(teacher),
        "dims": int(table.shape[1]),
        "sif": sif,
        "vocabulary": len(table),
        "probabilities": kind,
        "seconds": round(time.time() - started, 1),
    }
    static = modules.StaticEmbedding(tokenizer.backend_tokenizer, embedding_weights=table)
    folder = Path(folder)
    st.SentenceTransformer(modules=[static, modules.Normalize()], device="cpu").save(str(folder))
    tokenizer.save_pretrained(folder)  # the same tokenizer.json, plus the files AutoTokenizer reads
    # no prompts: e5's "query: " / "passage: " would be two more tokens in every mean
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": {}}, indent=2) + "\n")
    (folder / "camelid_distilled.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info(f"distilled {record['vocabulary']:,} token vectors of {teacher} in {record['seconds']} s")
    return record


def token_vectors(model, batch: int, bf16: bool) -> np.ndarray:
    """Each vocabulary token alone through the teacher, framed by its special tokens, pooled as a sentence."""
    import torch
    from tqdm import tqdm

    transformer, tokenizer = model[0], model[0].tokenizer
    pooling = [m for m in list(model)[1:] if type(m).__name__ != "Normalize"]
    vocab = max(len(tokenizer), 1)
    prefix, suffix = special_frame(tokenizer)
    frame, at = [*prefix, -1, *suffix], len(prefix)  # e.g. [CLS, -1, SEP]: where the token goes
    out = None
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with amp, torch.inference_mode():
        for start in tqdm(range(0, vocab, batch), desc="distill: token vectors", unit="batch"):
            ids = torch.arange(start, min(start + batch, vocab))
            x = torch.tensor(frame, dtype=torch.long).repeat(len(ids), 1)
            x[:, at] = ids
            features = {"input_ids": x, "attention_mask": torch.ones_like(x)}
            if "token_type_ids" in tokenizer.model_input_names:
                features["token_type_ids"] = torch.zeros_like(x)
            features = transformer(features)
            for module in pooling:
                features = module(features)
            pooled = features["sentence_embedding"].float().numpy()
            if out is None:
                out = np.zeros((vocab, pooled.shape[1]), dtype=np.float32)
            out[start : start + len(ids)] = pooled
    return out


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], <s> / </s>, or none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a")["input_ids"]
    for i in range(len(framed) - len(plain) + 1):
        if framed[i : i + len(plain)] == plain:
            return framed[:i], framed[i + len(plain) :]
    raise CamelidError("could not find where the tokenizer puts a text among its special tokens")


def pca(vectors: np.ndarray, special: np.ndarray, dims: int) -> np.ndarray:
    """The vectors centred on the ordinary tokens' mean and projected on their first `dims` principal axes."""
    ordinary = vectors[~special]
    centred = vectors - ordinary.mean(0)
    if dims >= vectors.shape[1]:
        return centred
    sample = centred[~special][:: max(1, len(ordinary) // PCA_ROWS)]
    _, _, axes = np.linalg.svd(sample.astype(np.float64), full_matrices=False)
    return centred @ axes[:dims].T.astype(np.float32)


def token_probabilities(tokenizer, vocab: int, special: np.ndarray) -> tuple[np.ndarray, str]:
    """(p(token), "unigram" or "zipf"): the unigram model's where the tokenizer has one, else Zipf's law over the
    ordinary ids."""
    scores = _unigram_scores(tokenizer)
    if scores is not None and len(scores) == vocab:
        p, kind = np.exp(scores), "unigram"
    else:
        rank = np.maximum(np.cumsum(~special), 1)  # 1 for the first ordinary id
        p, kind = 1.0 / rank, "zipf"
        p /= p[~special].sum()
    p[special] = np.inf  # weight 0
    return p, kind


def sif_weights(p: np.ndarray, a: float) -> np.ndarray:
    return a / (a + p)


def _unigram_scores(tokenizer) -> np.ndarray | None:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "Unigram":
        return None
    return np.array([score for _, score in model["vocab"]], dtype=np.float64)


def _modules():
    """sentence-transformers' module classes, where 6.x keeps them (older releases: sentence_transformers.models)."""
    try:
        return require("sentence_transformers.sentence_transformer.modules", "rag")
    except CamelidError:
        return require("sentence_transformers.models", "rag")
