"""`camelid clean` at scale: shards cut at line ends, the same output for any number of workers and shards (and on
Ray), dedup across shard boundaries, resuming a killed run, and errors naming the file's own line."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from camelid.config import load_config
from camelid.data import clean, clean_shard
from camelid.data.dedup import MinHasher, first_of_equal, near_duplicates, shared_buckets
from camelid.data.readers import DataError
from camelid.data.shards import Shard, line_count, plan, read_docs

WORDS = (
    "river mountain library window budget harvest engine village lantern orchard market winter signal garden "
    "teacher bridge harbor letter meadow castle pepper violin canyon rocket pebble forest candle museum island "
    "ladder thunder marble falcon cotton silver anchor basket copper desert velvet tunnel meadow planet walnut"
).split()
HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你"


def corpus(seed: int = 0, n: int = 240) -> tuple[list[str], dict[int, str]]:
    """n documents: distinct random texts (en and zh), with planted exact and near duplicates far from their
    originals (so across shard boundaries). Returns the texts and {index: 'exact_dup'|'near_dup'} of the plants."""
    rng = random.Random(seed)
    docs: list[str] = []
    for i in range(n):
        if i % 3 == 2:
            docs.append("".join(rng.choice(HAN) for _ in range(80)) + "。")
        else:
            docs.append(" ".join(rng.choice(WORDS) for _ in range(60)) + ".")
    planted = {}
    for k in range(12):
        src, dst = rng.randrange(0, n // 3), rng.randrange(2 * n // 3, n)
        if dst in planted or src in planted:
            continue
        if k % 2:
            docs[dst], planted[dst] = docs[src], "exact_dup"
        else:
            text = docs[src]
            if " " in text:  # a word of sixty changed
                words = text.split(" ")
                words[30] = "zebra"
                docs[dst] = " ".join(words)
            else:  # a character of eighty
                docs[dst] = text[:40] + "龙" + text[41:]
            planted[dst] = "near_dup"
    return docs, planted


def run(tmp_path: Path, files: dict[str, list[str]], out: str, *overrides: str) -> tuple[dict, Path]:
    paths = []
    for name, lines in files.items():
        p = tmp_path / name
        if not p.exists():
            body = [json.dumps({"id": i, "text": t}, ensure_ascii=False) for i, t in enumerate(lines)]
            p.write_text("\n".join(body if name.endswith(".jsonl") else lines) + "\n", encoding="utf-8")
        paths.append(str(p))
    cfg = load_config(
        None, [f"clean.inputs=[{','.join(paths)}]", f"clean.out={tmp_path / out}", "clean.pii=[]", *overrides]
    )
    return clean.main(cfg), tmp_path / out


def outputs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name.endswith((".txt", ".jsonl"))}


def test_shards_cut_at_line_ends_and_cover_the_file(tmp_path):
    docs, _ = corpus()
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(docs[:50]) + "\nlast line without a newline", encoding="utf-8")
    shards = plan([("c.txt", path, "text")], 2000)
    data = path.read_bytes()
    assert len(shards) > 5 and shards[0].start == 0 and shards[-1].end == -1
    for a, b in zip(shards, shards[1:]):
        assert a.end == b.start and data[b.start - 1 : b.start] == b"\n"
    whole = [(n, t) for n, _, _, t in read_docs(Shard(0, "c.txt", str(path), "text", 0, -1))]
    pieces, offset = [], 0
    for s in shards:
        pieces += [(n + offset, t) for n, _, _, t in read_docs(s)]
        offset += line_count(s)
    assert pieces == whole and offset == data.count(b"\n") + 1


def test_same_output_for_any_workers_and_shards_with_duplicates_across_shards(tmp_path):
    docs, planted = corpus()
    files = {"a.jsonl": docs[:160], "b.txt": docs[160:]}
    one, out1 = run(tmp_path, files, "one", "clean.workers=1", "clean.shard_mb=100")
    many, out2 = run(tmp_path, files, "many", "clean.workers=2", "clean.shard_mb=0.004")
    assert one["shards"] == 2 and many["shards"] > 10
    assert outputs(out1) == outputs(out2)
    assert (out1 / "removed.jsonl").read_text() == (out2 / "removed.jsonl").read_text()
    # every plant found, as what it is, and nothing else removed
    removed = [json.loads(x) for x in (out2 / "removed.jsonl").read_text().splitlines()]
    where = {(r["source"].split("/")[-1], r["line"]): r for r in removed}
    expected = {("a.jsonl" if i < 160 else "b.txt", i + 1 if i < 160 else i - 159): rule for i, rule in planted.items()}
    assert {k: r["rule"] for k, r in where.items()} == expected
    for (name, line), r in where.items():  # the line named holds the text, and so does the original it names
        assert docs[line - 1 if name == "a.jsonl" else line + 159][:50] == r["text"][:50]
        src_name, src_line = r["detail"].split(" ")[2 if r["rule"] == "exact_dup" else 1].rsplit(":", 1)
        assert Path(src_name).name == "a.jsonl" and docs[int(src_line) - 1][:40] == r["text"][:40]
    assert one["kept"] == len(docs) - len(planted)


def test_ray_executor_gives_the_same_output(tmp_path):
    ray = pytest.importorskip("ray")
    docs, planted = corpus(seed=1, n=150)
    files = {"a.jsonl": docs}
    _, local = run(tmp_path, files, "local", "clean.workers=1", "clean.shard_mb=100")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local cluster of 2 worker processes
    try:
        s, on_ray = run(tmp_path, files, "ray", "clean.executor=ray", "clean.shard_mb=0.004")
    finally:
        ray.shutdown()
    assert s["shards"] > 4 and s["executor"] == "ray"
    assert outputs(local) == outputs(on_ray)
    assert (local / "removed.jsonl").read_text() == (on_ray / "removed.jsonl").read_text()
    assert s["kept"] == len(docs) - len(planted)


def test_a_killed_run_resumes_from_its_finished_shards(tmp_path, monkeypatch):
    docs, _ = corpus(seed=2, n=120)
    files = {"a.jsonl": docs}
    real = clean_shard.clean_shard

    def dies_on_shard_4(ctx, job, report):
        if job[0].index == 4:
            raise KeyboardInterrupt  # as a kill would, half-way through the shards
        return real(ctx, job, report)

    monkeypatch.setattr(clean, "clean_shard", dies_on_shard_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, files, "out", "clean.workers=1", "clean.shard_mb=0.004")
    work = tmp_path / "out.shards"
    assert sorted(p.name for p in work.glob("shard-*")) == [f"shard-{i:05d}" for i in range(4)]
    assert not (tmp_path / "out").exists()
    (work / "shard-00005.tmp-123").mkdir()  # a half-written shard of the killed run is not trusted
    monkeypatch.setattr(clean, "clean_shard", real)
    resumed, out = run(tmp_path, files, "out", "clean.workers=2", "clean.shard_mb=0.004")
    assert resumed["shards_resumed"] == 4 and not work.exists()
    fresh, again = run(tmp_path, files, "fresh", "clean.workers=1", "clean.shard_mb=0.004")
    assert fresh["shards_resumed"] == 0
    assert outputs(out) == outputs(again)
    assert (out / "removed.jsonl").read_text() == (again / "removed.jsonl").read_text()
    # other settings: the finished shards do not fit them and are cleared
    monkeypatch.setattr(clean, "clean_shard", dies_on_shard_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, files, "out", "clean.workers=1", "clean.shard_mb=0.004")
    monkeypatch.setattr(clean, "clean_shard", real)
    other, _ = run(tmp_path, files, "out", "clean.workers=1", "clean.shard_mb=0.004", "clean.min_units=12")
    assert other["shards_resumed"] == 0


def test_a_bad_record_in_a_later_shard_names_the_files_line(tmp_path):
    docs, _ = corpus(seed=3, n=100)
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in docs]
    lines[87] = '{"text": oops}'
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_config(
        None,
        [f"clean.inputs=[{tmp_path / 'bad.jsonl'}]", f"clean.out={tmp_path / 'o'}", "clean.shard_mb=0.004"],
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:88: bad JSON"):
        clean.main(cfg)
    cfg.clean.on_error = "skip"
    s = clean.main(cfg)
    text = (tmp_path / "o" / "removed.jsonl").read_text()
    gone = [json.loads(x) for x in text.splitlines()]
    assert s["shards"] > 4 and [r["line"] for r in gone if r["rule"] == "bad_record"] == [88]
    assert [r["line"] for r in gone] == sorted(r["line"] for r in gone)  # in input order, bad records too
    cfg.clean.shard_mb = 100
    assert clean.main(cfg)["shards"] == 1 and (tmp_path / "o" / "removed.jsonl").read_text() == text


def test_dedup_stages():
    mh = MinHasher(0.8, 128, 5)
    assert mh.band_keys(np.zeros((0, 128), np.uint32)).shape == (0, mh.bands)  # a shard where nothing passed
    keys = np.array([5, 3, 5, 9, 3, 5], dtype=np.uint64)
    assert first_of_equal(keys).tolist() == [0, 1, 0, 3, 1, 0]
    members, bucket = shared_buckets(keys)
    assert sorted(zip(bucket.tolist(), members.tolist())) == [(0, 1), (0, 4), (1, 0), (1, 2), (1, 5)]
    # a chain A~B~C with C far from A: B goes (it repeats A), C stays (B, its only near neighbour, is gone)
    sig = {0: np.array([1, 1, 1, 1]), 1: np.array([1, 1, 1, 2]), 2: np.array([3, 1, 1, 2])}
    one_bucket = [(np.array([0, 1, 2]), np.array([0, 0, 0]))]
    assert near_duplicates(one_bucket, sig.__getitem__, 0.7) == {1: (0, 0.75)}


def test_batched_minhash_equals_datasketch_text_by_text():
    import datasketch

    from camelid.data.dedup import shingle_hashes

    rng = random.Random(0)
    texts = ["", "a", "abcd", "abcde", "中文", "羊驼" * 40]
    texts += ["".join(rng.choice("ab的一是 \n") for _ in range(rng.randrange(0, 300))) for _ in range(200)]
    texts.append("长" * 300_000)  # over a batch's characters: a batch of its own

    def shingles(text: str, k: int = 5) -> set[int]:  # the documented hash, one window at a time
        cps = [ord(c) for c in text] or [0]
        out = set()
        for i in range(len(cps) - min(k, len(cps)) + 1):
            h = 0
            for c in cps[i : i + k]:
                h = (h * 0x100000001B3 + c) % 2**64
            out.add((h ^ (h >> 32)) & 0xFFFFFFFF)
        return out

    mh = MinHasher(0.8, 128, 5)
    got = mh.signatures(texts)
    permutations = datasketch.MinHash(num_perm=128, seed=1, scheme="affine32").permutations
    for text, sig in zip(texts, got):
        assert set(shingle_hashes(text, 5).tolist()) == shingles(text)
        m = datasketch.MinHash(num_perm=128, hashfunc=int, permutations=permutations, scheme="affine32")
        m.update_batch(sorted(shingles(text)))
        assert np.array_equal(sig, np.asarray(m.hashvalues, dtype=np.uint32)), text[:20]
    assert np.array_equal(mh(texts[10]), got[10])


def _echo(context, item, report):
    return item


def test_the_largest_tasks_start_first_and_results_keep_item_order(monkeypatch):
    from concurrent.futures import ProcessPoolExecutor

    from camelid.data import workers

    assert workers.largest_first([3, 9, 1, 9]) == [1, 3, 0, 2]
    submitted = []

    class Recording(ProcessPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(args[-1])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(workers, "ProcessPoolExecutor", Recording)
    items = ["small", "large", "middle", "tiny"]
    assert workers.run_tasks(_echo, None, items, workers=2, sizes=[10, 100, 50, 1]) == items
    assert submitted == ["large", "middle", "small", "tiny"]
