"""RAG ingestion: every reader on a fixture written here (paragraphs, heading paths, lines and pages, errors), the
sentence splitter on Chinese, English and random text, and the chunker's budget, overlap and section rules."""

import random

import pytest

from camelid.rag.chunk import chunk_blocks, split_sentences
from camelid.rag.readers import SUFFIXES, Block, read_blocks
from camelid.utils import CamelidError

END = tuple("。！？.!?")


def words(texts):
    return [len(t.split()) for t in texts]


def chars(texts):
    return [len(t) for t in texts]


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# --- readers ----------------------------------------------------------------------------------------------------


def test_txt_paragraphs_and_lines(tmp_path):
    p = write(
        tmp_path,
        "poem.txt",
        "\ufeffFirst paragraph\nstill first.\r\n\r\n\n  Second one.  \n\nRoses are red,\nviolets blue.\n",
    )
    blocks = read_blocks(p)
    assert [(b.text, b.loc) for b in blocks] == [
        ("First paragraph\nstill first.", 1),
        ("Second one.", 5),
        ("Roses are red,\nviolets blue.", 7),
    ]
    assert all(b.heading == () and b.kind == "line" for b in blocks)


def test_markdown_headings_fences_links(tmp_path):
    md = "\n".join(
        [
            "---",
            "title: front matter",
            "---",  # 1-3, skipped
            "Guide",
            "=====",
            "",  # 4-6 setext level 1
            "See [the docs](https://example.com) and ![a cat](cat.png).",
            "",  # 7
            "## Install ##",
            "",  # 9
            "Run it",
            "twice.",
            "",  # 11-12
            "```",
            "# not a heading",
            "",
            "more code",
            "```",
            "",  # 14-18
            "Usage",
            "-----",
            "",  # 20-21 setext level 2 replaces Install
            "Use it.",
            "",  # 23
            "### Deep",
            "deep text",
            "",  # 25-26
            "# Other",
            "",
            "other text",  # 28, 30
        ]
    )
    blocks = read_blocks(write(tmp_path, "guide.md", md))
    got = [(b.heading, b.loc) for b in blocks]
    assert got == [
        (("Guide",), 7),
        (("Guide", "Install"), 11),
        (("Guide", "Install"), 14),
        (("Guide", "Usage"), 23),
        (("Guide", "Usage", "Deep"), 26),
        (("Other",), 30),
    ]
    assert blocks[0].text == "See the docs and a cat."
    assert blocks[1].text == "Run it\ntwice."
    assert "# not a heading" in blocks[2].text and "more code" in blocks[2].text  # one paragraph, not a heading
    assert not any("front matter" in b.text for b in blocks)
    assert all("not a heading" not in h for b in blocks for h in b.heading)


def test_html_headings_skips_entities_items(tmp_path):
    html = """<html><head><title>Site</title><style>p { color: red }</style></head>
<body><nav><a href="/">Home menu</a></nav>
<h1>Main   Title</h1>
<p>Fish &amp; chips
   are &lt;great&gt;.</p>
<script>var s = "<p>hidden script</p>";</script>
<h2>Sub</h2>
<ul><li>one</li><li>two</li></ul>
<div>line<br>break</div>
<footer>footer text</footer>
</body></html>"""
    blocks = read_blocks(write(tmp_path, "page.html", html))
    assert [(b.text, b.heading, b.loc) for b in blocks] == [
        ("Fish & chips are <great>.", ("Main Title",), 4),
        ("one", ("Main Title", "Sub"), 8),
        ("two", ("Main Title", "Sub"), 8),
        ("line\nbreak", ("Main Title", "Sub"), 9),
    ]
    everything = " ".join(b.text for b in blocks)
    for absent in ("color", "hidden script", "Home menu", "footer text", "Site"):
        assert absent not in everything


def test_pdf_pages(tmp_path):
    fpdf = pytest.importorskip("fpdf")
    pdf = fpdf.FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 6, "Alpaca wool is soft and warm. It is spun into yarn for knitting.")
    pdf.add_page()
    pdf.multi_cell(0, 6, "Llamas guard sheep on the second page.")
    pdf.output(str(tmp_path / "herd.pdf"))
    blocks = read_blocks(tmp_path / "herd.pdf")
    assert {b.kind for b in blocks} == {"page"}
    page1 = " ".join(b.text for b in blocks if b.loc == 1)
    page2 = " ".join(b.text for b in blocks if b.loc == 2)
    assert "Alpaca wool is soft and warm." in page1 and "spun into yarn" in page1
    assert page2 == "Llamas guard sheep on the second page."


def test_pdf_errors(tmp_path):
    fpdf = pytest.importorskip("fpdf")
    (tmp_path / "broken.pdf").write_bytes(b"this is not a pdf")
    with pytest.raises(CamelidError, match="broken.pdf"):
        read_blocks(tmp_path / "broken.pdf")
    pdf = fpdf.FPDF()
    pdf.add_page()  # a page with nothing drawn: no text layer
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(CamelidError, match=r"scan\.pdf.*no text layer"):
        read_blocks(tmp_path / "scan.pdf")


def test_jsonl_records_and_errors(tmp_path):
    p = write(
        tmp_path,
        "docs.jsonl",
        '{"title": "Alpacas", "text": "Soft wool.\\n\\nKind eyes."}\n\n'
        '{"content": "No title here."}\n{"heading": ["A", "B"], "title": "x", "text": "Deep."}\n',
    )
    assert [(b.text, b.heading, b.loc, b.kind) for b in read_blocks(p)] == [
        ("Soft wool.", ("Alpacas",), 1, "line"),
        ("Kind eyes.", ("Alpacas",), 1, "line"),
        ("No title here.", (), 3, "line"),
        ("Deep.", ("A", "B"), 4, "line"),
    ]
    for body, where, field in [
        ('{"text": "ok"}\n{"text": oops}\n', "bad.jsonl:2", "invalid JSON"),
        ('{"text": "ok"}\n\n{"body": "x"}\n', "bad.jsonl:3", "'text'"),
        ('{"text": 5}\n', "bad.jsonl:1", "'text'"),
        ('["a list"]\n', "bad.jsonl:1", "'text'"),
    ]:
        with pytest.raises(CamelidError) as e:
            read_blocks(write(tmp_path, "bad.jsonl", body))
        assert where in str(e.value) and field in str(e.value)


def test_unknown_suffix_and_bad_bytes(tmp_path):
    with pytest.raises(CamelidError) as e:
        read_blocks(write(tmp_path, "notes.docx", "x"))
    assert "notes.docx" in str(e.value) and all(s in str(e.value) for s in SUFFIXES)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(CamelidError, match="shown-name.txt"):
        read_blocks(tmp_path / "latin1.txt", name="shown-name.txt")


# --- split_sentences --------------------------------------------------------------------------------------------


def test_split_sentences_chinese():
    assert split_sentences("今天天气很好。我们去公园吧！你来吗？") == ["今天天气很好。", "我们去公园吧！", "你来吗？"]
    assert split_sentences("他说：“走吧。”然后走了……好的") == ["他说：“走吧。”", "然后走了……", "好的"]


def test_split_sentences_english():
    assert split_sentences("Mr. Smith paid 3.14 dollars. He left!  Why? Dr. J. Watson knew; he stayed.") == [
        "Mr. Smith paid 3.14 dollars. ",
        "He left!  ",
        "Why? ",
        "Dr. J. Watson knew; he stayed.",
    ]
    assert split_sentences('He said "Go." Then left.') == ['He said "Go." ', "Then left."]
    assert split_sentences("Use tools, e.g. a hammer. Done") == ["Use tools, e.g. a hammer. ", "Done"]
    assert split_sentences("no stop here\n\nnew paragraph") == ["no stop here\n\n", "new paragraph"]


def test_split_sentences_mixed():
    assert split_sentences("我用Python 3.11写代码。It works. 很好！OK") == [
        "我用Python 3.11写代码。",
        "It works. ",
        "很好！",
        "OK",
    ]


def test_split_sentences_join_is_lossless():
    rng = random.Random(0)
    alphabet = list('。！？….!?"”」 \n\nabcXYZ你好3') + ["Mr.", "e.g.", " ", "\n"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        pieces = split_sentences(text)
        assert "".join(pieces) == text
        assert all(p.strip() for p in pieces)


# --- chunk_blocks -----------------------------------------------------------------------------------------------


def english_doc():
    sents = [f"Sentence {i} has {'some ' * (i % 4)}words here." for i in range(30)]
    return [
        Block(" ".join(sents[k : k + 5]), ("Doc", "Part A" if k < 15 else "Part B"), "line", 1 + 3 * k // 5)
        for k in range(0, 30, 5)
    ], sents


def test_chunks_fit_and_end_at_sentences():
    blocks, sents = english_doc()
    for size, overlap in [(12, 0), (20, 6), (40, 15)]:
        chunks = chunk_blocks(blocks, words, size, overlap)
        assert chunks
        for c in chunks:
            assert c.n_tokens <= size and len(c.text.split()) <= size
            assert c.text.endswith(END) and c.text == c.text.strip()
        # Every sentence is somewhere, in order.
        seen = [s for c in chunks for s in sents if s in c.text]
        assert sorted(set(seen), key=sents.index) == sents


def test_overlap_and_no_overlap():
    blocks, sents = english_doc()
    plain = chunk_blocks(blocks, words, 20, 0)
    for a, b in zip(plain, plain[1:]):
        assert not {s for s in sents if s in a.text} & {s for s in sents if s in b.text}
    lapped = chunk_blocks(blocks, words, 20, 8)
    shared = 0
    for a, b in zip(lapped, lapped[1:]):
        common = [s for s in sents if s in a.text and s in b.text]
        if a.heading == b.heading:
            shared += bool(common)
            if common:  # the overlap is a's tail and b's head
                assert a.text.endswith(common[-1]) and b.text.startswith(common[0])
        assert b.text != a.text and not a.text.endswith(b.text)  # progress
    assert shared >= 2


def test_chunks_never_span_headings_and_locs():
    blocks = [
        Block("Alpha one. Alpha two.", ("H1",), "line", 1),
        Block("Alpha three.", ("H1",), "line", 4),
        Block("Beta one.", ("H2",), "line", 7),
        Block("Beta two.", ("H2",), "line", 9),
    ]
    chunks = chunk_blocks(blocks, words, 100, 0)
    assert [(c.text, c.heading, c.start, c.end) for c in chunks] == [
        ("Alpha one. Alpha two.\n\nAlpha three.", ("H1",), 1, 4),
        ("Beta one.\n\nBeta two.", ("H2",), 7, 9),
    ]
    assert [c.n_tokens for c in chunks] == [6, 4]
    small = chunk_blocks(blocks, words, 4, 0)
    assert [(c.start, c.end) for c in small] == [(1, 1), (4, 4), (7, 9)]


def test_prefers_paragraph_end():
    blocks = [Block("A b c. D e f.", (), "line", 1), Block("G h i. J k l. M n o.", (), "line", 3)]
    # Greedy would take "G h i." into the first chunk; the paragraph end at 6 tokens (>= half of 10) wins.
    assert [c.text for c in chunk_blocks(blocks, words, 10, 0)] == ["A b c. D e f.", "G h i. J k l. M n o."]


def test_long_sentence_is_split():
    long = "one two three, four five six, " + " ".join(f"w{i}" for i in range(40)) + " end."
    chunks = chunk_blocks([Block("Short start. " + long, ("S",), "page", 2)], words, 6, 2)
    assert all(c.n_tokens <= 6 and len(c.text.split()) <= 6 for c in chunks)
    assert all(c.start == c.end == 2 and c.kind == "page" for c in chunks)
    text = " ".join(c.text for c in chunks).replace(",", "")
    assert all(w in text.split() for w in long.replace(",", "").split())
    nospace = "x" * 50
    assert all(c.n_tokens <= 7 for c in chunk_blocks([Block(nospace, (), "line", 1)], chars, 7, 0))
    assert "".join(c.text for c in chunk_blocks([Block(nospace, (), "line", 1)], chars, 7, 0)) == nospace


def test_chinese_chunks_end_with_full_stop():
    calls = []

    def count(texts):
        calls.append(len(texts))
        return chars(texts)

    para = "大语言模型可以回答问题。微调让模型适应领域。检索增强生成引用资料。我们先切分文档。然后编码入库。"
    blocks = [Block(para, ("指南",), "line", 1), Block(para, ("指南",), "line", 3)]
    chunks = chunk_blocks(blocks, count, 30, 10)
    assert len(chunks) > 2 and calls == [10]  # one batch for the section's ten sentences
    for c in chunks:
        assert c.text.endswith("。") and c.n_tokens <= 30 and len(c.text.replace("\n", "")) <= 30


def test_bad_arguments_and_empty():
    assert chunk_blocks([], words, 10, 2) == []
    for size, overlap in [(0, 0), (10, 10), (10, -1)]:
        with pytest.raises(ValueError):
            chunk_blocks([], words, size, overlap)


# --- Markdown tables --------------------------------------------------------------------------------------------

TABLE_HEAD = ["# | Option | Default | Meaning", "--|--------|---------|--------"]
TABLE_ROWS = [f"{i} | opt_{i} | {i}.5 | What option {i} does. In a few words" for i in range(1, 9)]
TABLE_MD = "\n".join(
    ["# Options", "", "## Serving", "", "Every option below can be set on the command line:"]
    + TABLE_HEAD
    + TABLE_ROWS
    + ["---", "After the table."]
)


def test_markdown_table_is_one_block_under_its_section(tmp_path):
    # The header row "# | Option" is no heading, the table needs no blank line to end the paragraph above it,
    # and the "---" after it is a rule, not a setext underline making the table a heading.
    blocks = read_blocks(write(tmp_path, "options.md", TABLE_MD))
    assert [(b.text, b.heading, b.loc) for b in blocks] == [
        ("Every option below can be set on the command line:", ("Options", "Serving"), 5),
        ("\n".join(TABLE_HEAD + TABLE_ROWS), ("Options", "Serving"), 6),
        ("After the table.", ("Options", "Serving"), 17),
    ]


def test_a_table_is_kept_whole_or_split_between_rows_under_its_header():
    table, heading = "\n".join(TABLE_HEAD + TABLE_ROWS), ("Options", "Serving")
    blocks = [
        Block("Every option below can be set on the command line:", heading, "line", 5),
        Block(table, heading, "line", 6),
        Block("After the table.", heading, "line", 17),
    ]
    assert sum(table in c.text for c in chunk_blocks(blocks, words, 150, 0)) == 1  # it fits: whole
    for size, overlap in [(40, 0), (60, 10), (48, 8)]:
        chunks = chunk_blocks(blocks, words, size, overlap)
        parts = [c for c in chunks if TABLE_HEAD[0] in c.text]
        assert len(parts) > 1 and all(c.heading == heading for c in chunks)
        seen = []
        for c in parts:
            assert c.n_tokens <= size and len(c.text.split()) <= size
            part = c.text[c.text.index(TABLE_HEAD[0]) :].split("\n\n")[0].split("\n")  # up to the next paragraph
            assert part[:2] == TABLE_HEAD  # every part repeats the header row and its separator
            rows = part[2:]
            assert rows and all(r in TABLE_ROWS for r in rows)  # whole rows only
            seen += rows
        assert sorted(set(seen), key=TABLE_ROWS.index) == TABLE_ROWS
        if not overlap:
            assert seen == TABLE_ROWS
