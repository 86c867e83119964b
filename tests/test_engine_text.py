"""The engine's text in whole characters (camelid.engine.detok) with the byte-level BPE test tokenizer, where Chinese
characters and emoji are split over several tokens: streamed deltas never hold half a character and concatenate to
the final text, a fragment left at the end is dropped, an invalid byte sequence in the middle is dropped, and
logprobs carry each token's raw bytes so the text can be rebuilt from them."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS, build_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from camelid.config import EngineConfig
from camelid.engine import Engine, SamplingParams
from camelid.engine.detok import Detokenizer, TokenBytes, byte_level_alphabet

BYTE_CHAR = {b: c for c, b in byte_level_alphabet().items()}


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def byte_tokens(tok, data: bytes) -> list[int]:
    """One token per byte: the base alphabet of a byte-level BPE holds every byte."""
    return tok.convert_tokens_to_ids([BYTE_CHAR[b] for b in data])


class Scripted(torch.nn.Module):
    """The engine's step model with the logits of every sampled row pushed towards a script of tokens, so the
    engine itself generates a chosen sequence: generated token i sits at position prompt_len + i."""

    def __init__(self, model, prompt_len: int, script: list[int]):
        super().__init__()
        self.model, self.prompt_len, self.script = model, prompt_len, script

    def forward(self, *, position_ids, logits_to_keep, **kw):
        out = self.model(position_ids=position_ids, logits_to_keep=logits_to_keep, **kw)
        for row, pos in enumerate(position_ids[0, logits_to_keep].tolist()):
            i = pos + 1 - self.prompt_len
            if i < len(self.script):
                out.logits[0, row, self.script[i]] = out.logits[0, row].max() + 30
        return out


def scripted_engine(model_dir, prompt: list[int], script: list[int]) -> Engine:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = Engine(
        model,
        AutoTokenizer.from_pretrained(model_dir),
        EngineConfig(dtype="float32", block_size=4, kv_cache_tokens=1024, max_batch_tokens=64),
    )
    engine.step_model = Scripted(engine.step_model, len(prompt), script)
    return engine


def run(engine, prompt, params):
    """(final Completion, streamed deltas) of the same request, run twice."""
    [out] = engine.generate([prompt], params)
    deltas = [o.text for o in engine.stream(prompt, params)]
    return out, deltas


def test_split_characters_wait_for_their_last_byte(tiny_model, tok):
    prompt = tok.encode(CORPUS[0])
    text = "北京分成为一组🙂 ok"
    script = tok.encode("北京", add_special_tokens=False)  # 北 plus half of 京, then the rest of 京
    script += byte_tokens(tok, "分成为一组🙂".encode()) + tok.encode(" ok", add_special_tokens=False)
    assert len(script) > len(text)  # characters really are split over tokens
    engine = scripted_engine(tiny_model, prompt, script)
    params = SamplingParams(max_tokens=len(script), temperature=0, ignore_eos=True)
    out, deltas = run(engine, prompt, params)
    assert out.token_ids == script and out.finish_reason == "length"
    assert out.text == text
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert deltas.count("") >= len(script) - len(text) - 1  # steps that ended inside a character sent nothing
    assert "🙂" in deltas  # the emoji's four byte-tokens arrive as one character

    stop = SamplingParams(max_tokens=len(script), temperature=0, ignore_eos=True, stop=["为一"])
    out, deltas = run(engine, prompt, stop)
    assert out.finish_reason == "stop" and out.text == "北京分成" == "".join(deltas)


def test_a_fragment_left_at_the_end_is_dropped(tiny_model, tok):
    prompt = tok.encode(CORPUS[1])
    done = byte_tokens(tok, "尽力".encode())
    half = byte_tokens(tok, "了".encode())[:2]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for script, reason, params in [
        (done + half, "length", SamplingParams(max_tokens=len(done) + 2, temperature=0, ignore_eos=True)),
        (done + half + [eos], "stop", SamplingParams(max_tokens=40, temperature=0)),
    ]:
        engine = scripted_engine(tiny_model, prompt, script)
        out, deltas = run(engine, prompt, params)
        assert out.finish_reason == reason and out.token_ids == done + half
        assert out.text == "尽力" == "".join(deltas)


def test_an_invalid_byte_sequence_in_the_middle_is_dropped(tiny_model, tok):
    """What a sampler can produce when a penalty pushes away a character's continuation byte: a lead byte followed
    by the start of another character. The bytes that form no character are dropped, the rest is kept."""
    prompt = tok.encode(CORPUS[3])
    script = byte_tokens(tok, "分".encode()) + byte_tokens(tok, "成".encode())[:1] + byte_tokens(tok, "为一组".encode())
    engine = scripted_engine(tiny_model, prompt, script)
    out, deltas = run(engine, prompt, SamplingParams(max_tokens=len(script), temperature=0, ignore_eos=True))
    assert tok.decode(script) == "分\ufffd为一组"  # what the text was before
    assert out.text == "分为一组" == "".join(deltas)


def test_generated_text_never_holds_a_replacement_character(tiny_model, tok):
    """The random tiny model samples byte tokens freely: whatever it produces, the text is whole characters and the
    stream adds up to it."""
    prompts = [tok.encode(CORPUS[i]) for i in (2, 3)] + [tok.encode("分成为一组🙂")]
    engine = Engine(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval(),
        tok,
        EngineConfig(dtype="float32", block_size=4, kv_cache_tokens=2048, max_batch_tokens=64),
    )
    deltas: dict[str, list[str]] = {}
    reqs = [
        engine.submit(
            p,
            SamplingParams(max_tokens=40, temperature=1.0, seed=seed, ignore_eos=True),
            on_output=lambda o: deltas.setdefault(o.request_id, []).append(o.text),
        )
        for p in prompts
        for seed in range(4)
    ]
    while not all(r.finished for r in reqs):
        engine.step()
    outs = [r.result() for r in reqs]
    assert sum("\ufffd" in tok.decode(o.token_ids) for o in outs) > 0  # decoding the tokens whole shows U+FFFD
    for r, out in zip(reqs, outs):
        assert "\ufffd" not in out.text and "".join(deltas[r.id]) == out.text and len(out.token_ids) == 40


def test_logprob_bytes_rebuild_the_text(tiny_model, tok):
    from camelid.serve.protocol import logprob_items

    prompt = tok.encode(CORPUS[2])
    script = tok.encode("北京", add_special_tokens=False) + byte_tokens(tok, "组🙂".encode())
    engine = scripted_engine(tiny_model, prompt, script)
    params = SamplingParams(max_tokens=len(script), temperature=0, ignore_eos=True, logprobs=True, top_logprobs=3)
    [out] = engine.generate([prompt], params)
    items = logprob_items(engine.token_bytes, out.logprobs)
    assert len(items) == len(script)
    assert b"".join(bytes(i["bytes"]) for i in items).decode() == out.text == "北京组🙂"
    assert [bytes(i["bytes"]) for i in items[2:]] == [bytes([b]) for b in "组🙂".encode()]
    assert items[2]["token"] == "\\xe7"  # a fragment, shown as its byte rather than U+FFFD
    for entry, item in zip(out.logprobs, items):
        assert "\ufffd" not in item["token"]
        assert [t["logprob"] for t in item["top_logprobs"]] == [lp for _, lp in entry["top"]]
        for (token, _), alt in zip(entry["top"], item["top_logprobs"]):
            raw = bytes(alt["bytes"])
            assert alt["token"] == raw.decode("utf-8", "backslashreplace")
            assert raw.decode("utf-8", "replace") == tok.decode([token])  # what decode shows, minus the loss


def test_token_bytes_agree_with_decode():
    """Each token's bytes, concatenated, are what the tokenizer decodes: checked on text that splits characters."""
    tok = build_tokenizer("chatml")
    vocab = TokenBytes(tok)
    assert vocab.table is not None and vocab.strip == 0
    ids = tok.encode("北京是中国的首都。🙂 naïve text\n", add_special_tokens=False)
    assert b"".join(vocab[i] for i in ids).decode() == tok.decode(ids)
    assert vocab[tok.convert_tokens_to_ids("<|im_end|>")] == b"<|im_end|>"  # shown by name in logprobs
    detok = Detokenizer(vocab)
    assert detok.add(tok.convert_tokens_to_ids("<|im_end|>")) == ""  # but skipped in the text, as decode does


@pytest.mark.parametrize("kind", ["spm_bpe", "spm_unigram"])
def test_sentencepiece_byte_fallback_tokens(kind):
    """A SentencePiece vocabulary as `camelid tok train` builds it: ▁ for spaces, <0xNN> byte pieces for what it
    lacks (the emoji here), and the dummy prefix's space stripped from the start of the text, as decode does."""
    pytest.importorskip("sentencepiece")
    from camelid.config import TokConfig
    from camelid.data.tokenizer import train_tokenizer

    tok, _ = train_tokenizer(CORPUS[:5] * 4, TokConfig(vocab_size=380, threads=1), kind)
    vocab = TokenBytes(tok)
    assert vocab.table is not None and vocab.strip == 1
    ids = tok.encode("  北京 hello 🙂 x", add_special_tokens=False)
    assert "<0xF0>" in tok.convert_ids_to_tokens(ids)
    detok = Detokenizer(vocab)
    parts = [detok.add(t) for t in ids]
    assert "".join(parts) == tok.decode(ids) == "  北京 hello 🙂 x"
    assert "🙂" in parts  # its four byte pieces arrive as one character
    assert vocab[ids[0]] == b" "  # logprobs keep the token's own bytes, the dummy prefix's space included


def test_other_tokenizers_decode_whole_and_hold_back_a_split_character(tok):
    """A tokenizer without a byte view (a slow or custom one) decodes the whole output at each token; a trailing
    U+FFFD (half a character) waits, and is never part of the text."""

    class Slow:  # only what the engine uses: decode
        def decode(self, ids, skip_special_tokens=False):
            return tok.decode(ids, skip_special_tokens=skip_special_tokens)

    vocab = TokenBytes(Slow())
    assert vocab.table is None
    detok = Detokenizer(vocab)
    parts = [detok.add(t) for t in byte_tokens(tok, "分成".encode()) + byte_tokens(tok, "为".encode())[:2]]
    assert parts == ["", "", "分", "", "", "成", "", ""]
