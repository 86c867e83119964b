"""Typed, strict configuration: nested dataclasses, YAML files, dotted command-line overrides.

    cfg = load_config("configs/sft_lora.yaml", ["train.lr=1e-4", "lora.r=16"])

Unknown keys fail with the key and the closest valid one; values are checked against the field's
type; `validate(cfg, stage)` rejects impossible values and combinations before any weights load.

Every key is documented by the comment on the line that declares it (`camelid VERB --help` prints it). One
`Config` holds every section, but each verb reads only the sections SECTIONS names for it: those are the ones its
help lists, `validate` judges and a run folder's config.yaml records. A config.yaml with more sections (written
by an older camelid) or fewer (missing ones hold the defaults) loads all the same.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from camelid.utils import CamelidError

Method = Literal["full", "freeze", "lora", "qlora", "ptuning", "embedding"]
METHODS = typing.get_args(Method)
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "openai", "text", "preference", "prompt"]
PiiKind = Literal["email", "phone", "id_card", "bank_card"]


class ConfigError(CamelidError):
    pass


def _failing(*checks: tuple[bool, str]) -> list[str]:
    """The messages of the checks that failed. Each section checks its own fields in a `check()` beside them;
    rules that join sections (a method with a data option, ...) are in `validate`."""
    return [msg for ok, msg in checks if not ok]


@dataclass
class ModelConfig:
    name: str = ""  # local folder, Hugging Face id, or catalog name (camelid pull --list)
    dtype: Dtype = "float32"  # the weights' dtype once loaded; auto = the checkpoint's own
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"  # attention kernel transformers uses
    template: str = ""  # force a built-in chat template; empty = the tokenizer's own
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower steps
    trust_remote_code: bool = False  # runs code from the model repo: only when asked by name


@dataclass
class LoraConfig:
    r: int = 8  # rank of the low-rank update
    alpha: int = 16  # scale: the update is multiplied by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # draws a mask over every adapted input (hashed on CPU: camelid/lora_dropout.py); costs time
    target: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)
    dora: bool = False  # DoRA: learn each weight column's magnitude apart from its direction

    def check(self) -> list[str]:
        return _failing((self.r >= 1, "lora.r must be >= 1"))


@dataclass
class QuantConfig:
    bits: Literal[4, 8] = 4  # base weights' precision: 4 (QLoRA) or 8 (LLM.int8)
    quant_type: Literal["nf4", "fp4"] = "nf4"  # 4-bit data type: NormalFloat (the QLoRA paper's) or plain float
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bits per weight saved)


@dataclass
class FreezeConfig:
    last_n_blocks: int = 2  # train the last n transformer blocks ...
    modules: list[str] = field(default_factory=list)  # ... only these submodules of them (e.g. [mlp]); empty = all
    extra: list[str] = field(default_factory=list)  # other params to train by name substring (e.g. [norm])

    def check(self) -> list[str]:
        return _failing((self.last_n_blocks >= 0, "freeze.last_n_blocks must be >= 0"))


@dataclass
class PtuningConfig:
    virtual_tokens: int = 16  # trained prefix length, in key/value positions per layer
    projection: bool = False  # reparameterise the prefix through an MLP (P-Tuning v2 paper, sec. 2.3)
    projection_hidden: int = 256  # hidden width of that MLP

    def check(self) -> list[str]:
        return _failing((self.virtual_tokens >= 1, "ptuning.virtual_tokens must be >= 1"))


@dataclass
class EmbeddingConfig:
    # Train only the rows `camelid tok extend` added (method embedding): old rows, and so the logits of old tokens
    # on old-token inputs, stay bit-identical.
    new_rows_only: bool = False  # train only the added vocabulary rows (needs method embedding)
    first_new_id: int = 0  # the first added row; 0 = read it from the model folder's camelid_vocab.json

    def check(self) -> list[str]:
        return _failing((self.first_new_id >= 0, "embedding.first_new_id must be >= 0"))


@dataclass
class TokConfig:
    """`camelid tok train / extend / report`: train a tokenizer, add its vocabulary to a base's."""

    # auto: spm_bpe for `tok train`; for `tok extend`, what fits the base (spm_bpe for SentencePiece bases,
    # otherwise byte-level bpe with the base's own pre-tokenizer)
    kind: Literal["auto", "spm_bpe", "spm_unigram", "bpe", "wordpiece"] = "auto"  # auto: see the comment above
    vocab_size: int = 20000  # tokens in the trained vocabulary
    train: list[str] = field(default_factory=list)  # corpus: .txt / .jsonl files, FOLDER@ENTRY, catalog datasets
    eval: list[str] = field(default_factory=list)  # held-out text for the report (tokens per character before/after)
    eval_split: float = 0.02  # when tok.eval is empty, lines of tok.train held out for the report
    max_lines: int = 0  # train on a seeded sample of this many lines; 0 = all
    seed: int = 0  # picks the max_lines sample and the held-out lines
    byte_fallback: bool = True  # spm: characters outside the vocabulary become UTF-8 byte pieces, not <unk>
    split_digits: bool = True  # every digit its own token (Llama, Chinese-LLaMA)
    character_coverage: float = 0.9995  # spm: rarer characters are left to byte fallback
    min_frequency: int = 2  # bpe / wordpiece: pairs seen fewer times are not merged
    threads: int = 1  # spm: more is faster, but unigram results then depend on the thread count
    max_added: int = 0  # extend: add at most this many domain tokens (in the domain's own order); 0 = all new ones
    resize_model: bool = True  # extend: when BASE is a model, also write it with embeddings grown to the new vocab

    def check(self) -> list[str]:
        return _failing(
            (self.vocab_size >= 2, "tok.vocab_size must be >= 2"),
            (0 <= self.eval_split < 1, "tok.eval_split must be in [0, 1)"),
            (0 < self.character_coverage <= 1, "tok.character_coverage must be in (0, 1]"),
            (self.max_lines >= 0 and self.max_added >= 0, "tok.max_lines and tok.max_added must be >= 0"),
            (self.threads >= 1 and self.min_frequency >= 1, "tok.threads and tok.min_frequency must be >= 1"),
        )


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # files, folder@name (LLaMA-Factory), or catalog names
    eval: list[str] = field(default_factory=list)  # held-out sources, same forms as train
    eval_split: float = 0.0  # hold out this fraction of train for eval when `eval` is empty
    format: DataFormat = "auto"  # the record format of every source; auto = detected from the first record
    max_length: int = 1024  # tokens per example (and per packed row)
    max_samples: int = 0  # per source; 0 = all
    packing: bool = True  # pack whole examples into rows of max_length, attention kept per example
    on_error: Literal["fail", "skip"] = "fail"  # a bad record: stop with file:line, or skip it and count it
    truncation: Literal["right", "drop"] = "right"  # what to do with examples longer than max_length
    system: str = ""  # system prompt added to chats that have none

    def check(self) -> list[str]:
        return _failing(
            (0 <= self.eval_split < 1, "data.eval_split must be in [0, 1)"),
            (self.max_length >= 8, "data.max_length must be >= 8"),
        )


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"  # the run folder: config, metrics, checkpoints, final/
    lr: float = 2e-4  # peak learning rate (AdamW)
    epochs: float = 1.0  # passes over the training data (fractions allowed); used when max_steps is 0
    max_steps: int = 0  # optimizer steps; 0 = derived from epochs
    batch_size: int = 4  # examples (or packed rows) per micro-batch per device
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_ratio: float = 0.03  # share of the steps spent warming the learning rate up from 0
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"  # learning-rate decay after warmup
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    max_grad_norm: float = 1.0  # clip the gradient's global norm to this; 0 = no clipping
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"  # autocast dtype; auto: bf16 where it is native
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 0  # steps; 0 = only the final save
    keep_last: int = 2  # checkpoints kept; older ones are deleted
    log_every: int = 1  # steps between metrics.jsonl / TensorBoard lines
    seed: int = 42  # seeds weights init, data order and dropout
    # true: continue from the newest checkpoint in output_dir if the config changes nothing that trained it (see
    # camelid/train/run.py); force: continue whatever changed, recorded in config_history.yaml; false: start over,
    # in a new folder beside output_dir when that one already holds a run
    resume: bool | Literal["force"] = True  # continue the run in output_dir? (see the comment above)
    tensorboard: bool = True  # also write metrics for TensorBoard under tensorboard/

    def check(self) -> list[str]:
        return _failing(
            (self.lr > 0, "train.lr must be > 0"),
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.grad_accum >= 1, "train.grad_accum must be >= 1"),
            (self.max_steps > 0 or self.epochs > 0, "set train.max_steps or train.epochs"),
            (0 <= self.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
            (self.keep_last >= 1, "train.keep_last must be >= 1"),
        )


@dataclass
class ChatConfig:
    max_new_tokens: int = 256  # longest reply, in tokens
    temperature: float = 0.7  # sampling temperature; 0 = greedy
    top_p: float = 0.9  # nucleus sampling: keep the smallest set of tokens holding this probability
    repetition_penalty: float = 1.1  # small models loop without it
    system: str = ""  # system prompt for the conversation; empty = none


@dataclass
class EngineConfig:
    dtype: Dtype = "auto"  # auto: bfloat16 on GPUs and bf16-capable CPUs
    block_size: int = 16  # tokens per KV block: the unit of memory and of prefix reuse
    kv_cache_tokens: int = 0  # KV capacity in tokens; 0 = 85% of free GPU memory, or 2 GiB on CPU
    max_batch_tokens: int = 512  # new tokens per forward (decode tokens + prompt chunks)
    max_running: int = 64  # requests decoding together
    max_model_len: int = 0  # prompt + output; 0 = the model's max_position_embeddings (capped by the cache)
    prefix_cache: bool = True  # reuse KV blocks of identical prefixes (system prompt, earlier session turns)
    # torch CPU threads, set when the engine starts; 0 = torch's default (one per core). On a host shared with other
    # work fewer is faster: on 2 busy cores `generate` ran 3.5x faster with 1 thread than with 2.
    threads: int = 0  # torch CPU threads; 0 = torch's default (see the comment above)

    def check(self) -> list[str]:
        return _failing(
            (self.block_size >= 1, "engine.block_size must be >= 1"),
            (self.max_batch_tokens >= 1, "engine.max_batch_tokens must be >= 1"),
            (self.max_running >= 1, "engine.max_running must be >= 1"),
        )


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # anything else requires API keys
    port: int = 8000  # TCP port to listen on
    model_name: str = ""  # the id clients send as `model`; empty = the folder's name
    api_keys_file: str = ""  # one key per line (`#` comments); also CAMELID_API_KEYS="k1,k2"
    sessions_db: str = "camelid_sessions.sqlite"  # SQLite file holding server-side chat sessions
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 512  # max_tokens of a request that sets none (capped at serve.max_tokens)
    max_concurrent_per_key: int = 16  # generations in flight per API key, a call counting prompts x n; more get 429
    max_n: int = 8  # the most choices (n) a request may ask for
    max_prompts_per_request: int = 64  # prompts in one /v1/completions call; more get 400
    request_timeout: float = 300.0  # seconds; a request still running then is aborted (504 / an error event)
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM/SIGINT before abort
    kb: list[str] = field(default_factory=list)  # knowledge bases answered as model "kb:<name>" (names or folders)
    ui: bool = True  # the web UI at /ui (chat, knowledge bases, runs), behind the same API keys
    runs_root: str = "runs"  # the folder whose run and recipe folders the UI shows (nothing outside it is read)
    max_upload_bytes: int = 50_000_000  # the largest document one upload to a knowledge base may be

    def check(self) -> list[str]:
        return _failing(
            (self.max_concurrent_per_key >= 1, "serve.max_concurrent_per_key must be >= 1"),
            (self.max_tokens >= 1, "serve.max_tokens must be >= 1"),
            (self.default_max_tokens >= 1, "serve.default_max_tokens must be >= 1"),
            (self.max_prompts_per_request >= 1, "serve.max_prompts_per_request must be >= 1"),
            (self.max_upload_bytes >= 1, "serve.max_upload_bytes must be >= 1"),
        )


@dataclass
class RagConfig:
    root: str = ""  # where knowledge bases live; empty = $CAMELID_HOME/kb
    # A knowledge base is bound to the encoder it was built with (recorded in its kb.json); this picks it at creation.
    # The catalog's multilingual-e5-small reads Chinese and English; all-minilm-l6-v2 (the default before) English.
    embedding_model: str = "multilingual-e5-small"  # catalog name, folder or sentence-transformers id
    embedding_batch: int = 64  # texts per encoder forward when adding documents
    # bfloat16 encoded 1.6x (e5) to 2.7x (MiniLM) faster where the CPU multiplies it natively (AVX512-BF16, AMX).
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 on such CPUs and GPUs
    chunk_tokens: int = 200  # in the encoder's tokens (all-MiniLM-L6-v2 reads at most 256, e5 512)
    chunk_overlap: int = 32  # tokens a chunk repeats from the end of the one before
    retriever: Literal["hybrid", "bm25", "dense"] = "hybrid"  # both, fused by reciprocal rank, or one alone
    candidates: int = 40  # per retriever, before fusion
    rrf_k: int = 60  # reciprocal rank fusion: score = sum 1/(rrf_k + rank) (Cormack et al. 2009)
    top_k: int = 4  # chunks put in the prompt (at most; fewer if the context budget is smaller)
    # A chunk is relevant when one retriever vouches for it: cosine >= min_similarity, or the share of the
    # question's BM25 weight (idf) it matches >= min_term_share. Nothing relevant → the "not found" answer.
    # auto = the value the catalog measured for the encoder (all-MiniLM-L6-v2 0.35; multilingual-e5-small, whose
    # cosines are compressed, 0.89 for a question with Chinese characters and 0.83 otherwise; its static
    # distillation 0.91 and 0.85), else 0.35.
    min_similarity: float | Literal["auto"] = "auto"  # dense: the least cosine that makes a chunk relevant
    min_term_share: float = 0.4  # BM25: the least share of the question's idf weight a relevant chunk matches
    # Dense retrieval sits out a question, and drops a chunk, whose tokens are more than this share [UNK] to the
    # encoder (a language it cannot read: all-MiniLM-L6-v2 and Chinese); camelid/rag/retrieve.py says why.
    max_unknown_share: float = 0.2  # dense ignores questions and chunks with more [UNK] tokens than this
    # llm: the answering model is asked whether each passage answers the question (kb ask and the server only).
    reranker: str = ""  # reorders the fused best: a cross-encoder (folder or id), or llm; empty = none
    rerank_top: int = 10  # the fused candidates a reranker reads (the rest are dropped)
    min_rerank_score: float = float("-inf")  # with a reranker: drop candidates it scores below this (llm: log-odds)
    max_prompt_tokens: int = 0  # cap on the grounded prompt; 0 = the model's context less the answer's tokens
    max_new_tokens: int = 256  # longest grounded answer, in tokens
    temperature: float = 0.0  # grounded answers: greedy by default
    system: str = ""  # replaces the built-in grounding instruction

    def check(self) -> list[str]:
        return _failing(
            (self.chunk_tokens >= 16, "rag.chunk_tokens must be >= 16"),
            (
                0 <= self.chunk_overlap < self.chunk_tokens // 2,
                "rag.chunk_overlap must be in [0, rag.chunk_tokens / 2)",
            ),
            (
                self.top_k >= 1 and self.candidates >= self.top_k,
                "rag.top_k must be >= 1 and rag.candidates >= rag.top_k",
            ),
            (
                min(self.rrf_k, self.embedding_batch, self.rerank_top) >= 1,
                "rag.rrf_k, rag.embedding_batch and rag.rerank_top must be >= 1",
            ),
            (
                self.min_similarity == "auto" or -1 <= self.min_similarity <= 1,
                "rag.min_similarity must be auto or in [-1, 1]",
            ),
            (0 <= self.max_unknown_share <= 1, "rag.max_unknown_share must be in [0, 1]"),
            (0 <= self.min_term_share <= 1, "rag.min_term_share must be in [0, 1]"),
            (self.max_new_tokens >= 1, "rag.max_new_tokens must be >= 1"),
            (self.max_prompt_tokens >= 0, "rag.max_prompt_tokens must be >= 0"),
        )


@dataclass
class EvalConfig:
    tasks: list[str] = field(
        default_factory=list
    )  # mmlu, arc_easy, ... or NAME=PATH (a local copy; mc_jsonl=exam.jsonl)
    k_shot: int = 0  # solved examples put before each multiple-choice question
    seed: int = 1234  # picks the k-shot examples
    limit: int = 0  # items per task; 0 = all
    batch_tokens: int = 4096  # tokens per scoring forward (rows x padded width)
    bf16_margin: float = 0.0  # > 0: score in bf16, near-ties again in float32 (nats on a 1-token gap; ItemScore.margin)
    perplexity: list[str] = field(default_factory=list)  # text files
    ppl_window: int = 1024  # tokens per perplexity window
    ppl_stride: int = 512  # tokens between window starts; each token is scored once, with the most context
    ppl_max_chars: int = 0  # score only the first N characters of each file (whole lines); 0 = all
    samples: str = ""  # prompts (jsonl with "prompt"/"instruction", or .txt one per line) answered and saved
    preference: list[str] = field(default_factory=list)  # preference pairs a reward model is scored on (accuracy)
    max_new_tokens: int = 128  # longest answer generated for eval.samples
    after_training: bool = True  # when anything above is set, sft/pt end by evaluating the base and the run

    def check(self) -> list[str]:
        return _failing(
            (self.k_shot >= 0, "eval.k_shot must be >= 0"),
            (self.bf16_margin >= 0, "eval.bf16_margin must be >= 0 (0 = float32 throughout)"),
            (0 < self.ppl_stride <= self.ppl_window, "eval.ppl_stride must be in [1, eval.ppl_window]"),
            (self.ppl_max_chars >= 0, "eval.ppl_max_chars must be >= 0 (0 = the whole file)"),
        )


@dataclass
class RmConfig:
    margin: float = 0.0  # subtract from the chosen−rejected gap in the loss (a fixed margin, as in Llama 2's RM)


@dataclass
class DpoConfig:
    beta: float = 0.1  # strength of the KL tie to the reference (DPO's β; IPO's τ)
    loss: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023)
    label_smoothing: float = 0.0  # cDPO: the share of pairs assumed to be mislabelled (sigmoid loss only)
    precompute_ref: bool = False  # score every pair with the reference once before training, then drop it

    def check(self) -> list[str]:
        return _failing(
            (self.beta > 0, "dpo.beta must be > 0"),
            (0 <= self.label_smoothing < 0.5, "dpo.label_smoothing must be in [0, 0.5)"),
        )


@dataclass
class PpoConfig:
    reward_model: str = ""  # a `camelid rm` run or a ...ForSequenceClassification folder
    layout: Literal["shared", "separate"] = "shared"  # LoRA: actor, critic and reference on one base (adapters on/off)
    rollout_batch: int = 8  # prompts sampled per PPO update (one "episode" each)
    mini_batch: int = 4  # episodes per optimizer step inside an update
    ppo_epochs: int = 4  # passes over each rollout batch
    max_new_tokens: int = 64  # longest sampled response per rollout
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling; 1 = off
    top_k: int = 0  # rollout top-k sampling; 0 = off
    kl_coef: float = 0.05  # β of the per-token KL penalty to the reference
    adaptive_kl: bool = False  # Ziegler et al. 2019: steer β so the KL tracks target_kl
    target_kl: float = 6.0  # with adaptive_kl: the KL to the reference that β steers toward
    kl_horizon: int = 10000  # with adaptive_kl: how many episodes β's correction is spread over
    gamma: float = 1.0  # discount of later rewards in GAE
    lam: float = 0.95  # GAE λ
    clip_range: float = 0.2  # PPO's ε for the policy ratio
    value_clip: float = 0.2  # the critic's values move at most this far from the rollout's per update
    vf_coef: float = 0.1  # weight of the critic's value loss
    critic_lr: float = 0.0  # 0 = train.lr
    whiten_rewards: bool = False  # normalise per-token rewards over the batch before GAE
    reward_clip: float = 10.0  # clip the reward model's score to ±this; 0 = no clipping
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses cut at max_new_tokens
    ptx_data: list[str] = field(default_factory=list)  # PPO-ptx (InstructGPT): pretraining / SFT data mixed in
    ptx_coef: float = 0.0  # weight γ of that language-model loss
    ptx_batch: int = 4  # ptx examples per optimizer step

    def check(self) -> list[str]:
        batches = self.rollout_batch >= 1 and self.mini_batch >= 1
        return _failing(
            (batches, "ppo.rollout_batch and ppo.mini_batch must be >= 1"),
            (
                not batches or self.rollout_batch % self.mini_batch == 0,
                f"ppo.rollout_batch ({self.rollout_batch}) must be a multiple of ppo.mini_batch ({self.mini_batch})",
            ),
            (self.ptx_coef <= 0 or bool(self.ptx_data), "ppo.ptx_coef > 0 needs ppo.ptx_data"),
            (self.ppo_epochs >= 1, "ppo.ppo_epochs must be >= 1"),
            (self.max_new_tokens >= 1, "ppo.max_new_tokens must be >= 1"),
            (self.kl_coef >= 0, "ppo.kl_coef must be >= 0"),
            (0 <= self.lam <= 1 and 0 <= self.gamma <= 1, "ppo.lam and ppo.gamma must be in [0, 1]"),
            (self.clip_range > 0 and self.value_clip > 0, "ppo.clip_range and ppo.value_clip must be > 0"),
        )


@dataclass
class CleanConfig:
    """`camelid clean`. Documents meet the rules in the order below; the first rule that fires removes one."""

    inputs: list[str] = field(
        default_factory=list
    )  # .txt (a doc per line) / .jsonl / .json / .csv / .parquet, or catalog corpora
    out: str = "runs/clean"  # kept corpus (one file per input), removed.jsonl, summary.md/json; replaced atomically
    text_field: str = "text"  # the record field holding the document (not used for .txt)
    on_error: Literal["fail", "skip"] = "fail"  # a bad record (bad JSON, no text): stop, or count it and go on
    # normalization: rewrites every document
    nfkc: bool = True  # Unicode NFKC: full-width ASCII (ＡＢＣ１２３，) → half-width, compatibility forms folded
    t2s: bool = False  # Traditional → Simplified Chinese with OpenCC (the `clean` extra)
    exact_dedup: bool = True  # the same normalized text seen before
    # heuristic quality; a "unit" is a CJK character or a word of another script, so one number fits zh and en
    min_units: int = 10  # ~ a short Chinese sentence or English clause
    max_units: int = 0  # 0 = no limit
    max_symbol_share: float = 0.2  # of non-space chars: not letters, digits or common punctuation (markup, emoji walls)
    max_digit_share: float = 0.4  # of non-space chars (tables of numbers; a zh sentence with a year reaches 0.35)
    max_repeated_line_share: float = 0.3  # characters in lines repeating an earlier line (Gopher: 0.2)
    max_repeated_ngram_share: float = 0.3  # `repeat_ngram`-unit windows repeating an earlier window (spam, boilerplate)
    repeat_ngram: int = 10  # window length (units) for max_repeated_ngram_share
    languages: list[Literal["zh", "en"]] = field(default_factory=lambda: ["zh", "en"])  # zh: Han, en: Latin; [] = any
    min_language_share: float = 0.5  # of a document's units, in the scripts of `languages`
    # decontamination: documents sharing an n-gram with a benchmark question go
    decontaminate: list[str] = field(default_factory=list)  # eval tasks as in eval.tasks: mmlu, mc_jsonl=exam.jsonl
    decontam_ngram: int = 13  # units, for questions written mostly in words (GPT-3's 13-gram rule)
    decontam_ngram_zh: int = 25  # for questions mostly in Chinese characters: 13 characters are a common phrase
    # perplexity under a character n-gram LM (interpolated Kneser-Ney) trained on a reference corpus
    ppl_reference: list[str] = field(default_factory=list)  # text files or catalog corpora of text you want; [] = off
    ppl_order: int = 5  # n of the character n-gram LM
    ppl_max: float = 0.0  # drop documents above this char perplexity; 0 = the ppl_quantile of held-out reference docs
    ppl_quantile: float = 0.99  # with ppl_max=0: the reference quantile used as the limit
    ppl_min_units: int = 10  # shorter documents are not judged (their perplexity is noise)
    # near-duplicates: MinHash-LSH over character shingles (datasketch, the `clean` extra); last, as the costliest
    near_dedup: bool = True  # drop documents that nearly repeat one kept earlier
    near_dedup_threshold: float = 0.8  # estimated Jaccard similarity of the shingle sets
    minhash_perm: int = 128  # MinHash permutations: more estimate Jaccard better, cost more
    shingle: int = 5  # characters per shingle (works without word segmentation, so for zh too)
    # PII: masked in the documents kept
    pii: list[PiiKind] = field(default_factory=lambda: list(typing.get_args(PiiKind)))  # masked in kept docs; [] = none
    # scale: shards are cleaned in parallel, then merged for dedup; the output is the same for any number of workers
    workers: int = 0  # worker processes (Ray CPUs when it starts a local cluster); 0 = every core this process may use
    shard_mb: float = 0.0  # MB per shard (big .txt/.jsonl files are cut at line ends); 0 = corpus / 64, in [0.25, 64]
    executor: Literal["local", "ray"] = "local"  # local processes, or Ray tasks (the `ray` extra; shared storage)
    ray_address: str = ""  # executor=ray: "" starts a local cluster; "auto" or HOST:PORT joins a running one

    def check(self) -> list[str]:
        shares = (
            self.max_symbol_share,
            self.max_digit_share,
            self.max_repeated_line_share,
            self.max_repeated_ngram_share,
            self.min_language_share,
        )
        return _failing(
            (bool(self.inputs), "clean.inputs needs at least one file (camelid clean FILE ...)"),
            (self.min_units >= 0 and self.max_units >= 0, "clean.min_units and clean.max_units must be >= 0"),
            (
                self.max_units == 0 or self.max_units >= self.min_units,
                "clean.max_units must be 0 or >= clean.min_units",
            ),
            (all(0 <= v <= 1 for v in shares), "clean.*_share values must be in [0, 1]"),
            (self.repeat_ngram >= 2, "clean.repeat_ngram must be >= 2"),
            (self.decontam_ngram >= 1 and self.decontam_ngram_zh >= 1, "clean.decontam_ngram(_zh) must be >= 1"),
            (0 < self.near_dedup_threshold <= 1, "clean.near_dedup_threshold must be in (0, 1]"),
            (self.minhash_perm >= 16, "clean.minhash_perm must be >= 16"),
            (self.shingle >= 1, "clean.shingle must be >= 1"),
            (self.workers >= 0, "clean.workers must be >= 0 (0 = every core)"),
            (self.shard_mb >= 0, "clean.shard_mb must be >= 0 (0 = automatic)"),
            (2 <= self.ppl_order <= 8, "clean.ppl_order must be in [2, 8]"),
            (self.ppl_max >= 0, "clean.ppl_max must be >= 0 (0 = from the reference)"),
            (0 < self.ppl_quantile < 1, "clean.ppl_quantile must be in (0, 1)"),
        )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Method = "lora"  # what trains (the README's Methods table)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    ptuning: PtuningConfig = field(default_factory=PtuningConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rm: RmConfig = field(default_factory=RmConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    tok: TokConfig = field(default_factory=TokConfig)
    rag: RagConfig = field(default_factory=RagConfig)


# The config sections (and the top-level `method`) each verb reads. The one table behind `camelid VERB --help`,
# `camelid config VERB`, validation (only these are judged) and run folders (only these are saved); a section a
# verb does not read may sit in its YAML file unjudged, so one file serves `camelid data` and `camelid sft`.
_TRAINING = ("model", "method", "lora", "quant", "freeze", "ptuning", "embedding", "data", "train", "eval")
SECTIONS: dict[str, tuple[str, ...]] = {
    "pt": _TRAINING,
    "sft": _TRAINING,
    "rm": _TRAINING + ("rm",),
    "dpo": _TRAINING + ("dpo",),
    "ppo": _TRAINING + ("ppo", "engine"),  # the engine samples the rollouts
    "quickstart": _TRAINING,
    "data": ("model", "data"),
    "eval": ("model", "eval"),
    "chat": ("model", "chat", "engine"),
    "serve": ("model", "serve", "engine", "rag"),  # rag: the knowledge bases in serve.kb
    "kb": ("model", "rag", "chat", "engine"),  # kb ask: model.name answers, with chat's sampling
    "tok": ("model", "tok"),
    "clean": ("clean",),
    "export": (),
    "report": (),
    "vllm": (),
    "pull": (),
}


def sections(stage: str) -> tuple[str, ...]:
    if stage not in SECTIONS:
        raise ConfigError(f"unknown stage '{stage}'{_closest(stage, list(SECTIONS))}")
    return SECTIONS[stage]


# ---------------------------------------------------------------------------------------------
# building from dicts


# Names people bring from transformers / LLaMA-Factory, so a near miss of those still finds our key.
ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "lora_rank": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target",
    "lora_target": "target",
    "model_name_or_path": "name",
    "cutoff_len": "max_length",
    "max_seq_length": "max_length",
    "lr_scheduler_type": "scheduler",
    "max_grad_norm": "max_grad_norm",
    "bf16": "mixed_precision",
    "dataset": "train",
    "template": "template",
    "finetuning_type": "method",
}


def _closest(key: str, options: list[str]) -> str:
    aliases = {a: t for a, t in ALIASES.items() if t in options}
    best = difflib.get_close_matches(key, options + list(aliases), n=1, cutoff=0.6)
    if best:
        return f" (did you mean '{aliases.get(best[0], best[0])}'?)"
    return f" (valid: {', '.join(options)})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only what is unambiguous (int → float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
            # YAML 1.1 reads a bare no/off as False and yes/on as True: give the word back where it is an option
            words = ("no", "off", "false") if not value else ("yes", "on", "true")
            value = next((a for a in allowed if a in words), value)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list,):
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # `data.train=file.jsonl` on the command line means a list of one
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    else:  # pragma: no cover - a new field type was added without teaching _coerce
        raise ConfigError(f"{where}: unsupported type {tp}")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, where: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{path}'{_closest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """`train.lr=1e-4` → 0.0001, `x=true` → True, `x=[a,b]` → list; YAML rules, except that
    YAML 1.1 reads 1e-4 as a string, so numbers are tried first."""
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return yaml.safe_load(text) if text else ""


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{k}' is not a section")
        node[keys[-1]] = _parse_scalar(raw.strip())
    return data


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(path: str | Path) -> Path:
    """A config file by path, or a shipped one by name (`sft_lora`, `configs/sft_lora.yaml`): the README's commands
    then work from any directory and from a wheel install, where no `configs/` folder sits beside the user."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml"
    shipped = SHIPPED_CONFIGS / (p.parent.name if p.parent.name == "accelerate" else "") / name
    if shipped.is_file() and (len(p.parts) == 1 or p.parent.name in ("configs", "accelerate")):
        return shipped
    names = sorted(x.stem for x in SHIPPED_CONFIGS.glob("*.yaml"))
    close = difflib.get_close_matches(p.stem, names, n=3)
    hint = f" (shipped configs with a close name: {', '.join(close)})" if close else f" (shipped: {', '.join(names)})"
    raise ConfigError(f"config file not found: {p}{hint}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path:
        p = find_config(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
    apply_overrides(data, overrides or [])
    return _build(Config, data)


def to_dict(cfg: Config, stage: str | None = None) -> dict:
    """The config as plain data: every section, or only the ones `stage` reads (see SECTIONS)."""
    d = dataclasses.asdict(cfg)
    return d if stage is None else {k: v for k, v in d.items() if k in sections(stage)}


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys: {"train": {"lr": 1e-4}} → {"train.lr": 1e-4}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_config(cfg: Config, path: str | Path, stage: str | None = None) -> None:
    """Write the config as YAML that load_config reads back: a run folder records only its stage's sections, so
    its config.yaml says what the run used and nothing another verb would."""
    text = yaml.safe_dump(to_dict(cfg, stage), sort_keys=False, allow_unicode=True)
    Path(path).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# what each key means, read where it is declared: `camelid VERB --help` and `camelid config VERB` print it


def field_docs(cls: type) -> dict[str, str]:
    """{field: its description}: the comment on the line that declares the field. A longer why goes in a comment
    block above the field; only the line's own comment is the description (a test checks every field has one)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source shipped (a frozen build): help still lists keys, types, defaults
        return {}
    docs, line, depth = {}, [], 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type == tokenize.COMMENT and line:
            # A field's own line: `name: type [= default]  # description`, directly in the class body.
            if depth == 1 and len(line) > 1 and line[0].type == tokenize.NAME and line[1].string == ":":
                docs.setdefault(line[0].string, tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NEWLINE:
            line = []
        elif tok.type not in (tokenize.NL, tokenize.COMMENT):
            line.append(tok)
    return docs


def type_name(tp: Any) -> str:
    """A field's annotation as a user reads it: `int`, `list[str]`, `auto|float32|...`, `bool|force`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a).lower() if isinstance(a, bool) else str(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------------------------
# combinations that cannot work, caught before any weights load

TRAINING_STAGES = ("pt", "sft", "rm", "dpo", "ppo")


def _combinations(cfg: Config, stage: str) -> list[str]:
    """Rules that join sections: each applies only to the stages that read every section it names."""
    t, d, m = cfg.train, cfg.data, cfg.model
    errors = []
    if stage in TRAINING_STAGES + ("data",):
        if not m.name:
            errors.append("model.name is required (a folder, a Hugging Face id, or a catalog name)")
        if not d.train:
            errors.append("data.train needs at least one source")
    if stage not in TRAINING_STAGES:
        return errors
    if cfg.embedding.new_rows_only:
        if cfg.method != "embedding":
            errors.append(
                f"embedding.new_rows_only trains only the new embedding rows, so it needs method embedding "
                f"(method is '{cfg.method}')"
            )
        if t.weight_decay > 0:
            # AdamW decays every row of a matrix that has a gradient, masked or not: old rows would shrink.
            errors.append(
                "embedding.new_rows_only needs train.weight_decay=0: AdamW's decay would move the old rows too"
            )
    if stage == "rm" and (cfg.eval.tasks or cfg.eval.perplexity or cfg.eval.samples):
        errors.append("a reward model is evaluated with eval.preference only (it does not generate or score text)")
    if stage != "rm" and cfg.eval.preference:
        errors.append("eval.preference scores reward models; it belongs to the rm stage")
    if stage == "rm" and cfg.method not in ("full", "freeze", "lora", "qlora"):
        errors.append(f"method '{cfg.method}' cannot train a reward model; use full, freeze, lora or qlora")
    if stage == "ppo":
        if cfg.method not in ("full", "freeze", "lora", "qlora"):
            errors.append(f"method '{cfg.method}' is not supported by ppo; use full, freeze, lora or qlora")
        if cfg.ppo.layout == "shared" and cfg.method not in ("lora", "qlora"):
            errors.append(
                "ppo.layout=shared needs method lora or qlora (adapters switched on one base); "
                "use ppo.layout=separate for full or freeze"
            )
        if cfg.ppo.layout == "separate" and cfg.method == "qlora":
            errors.append("ppo.layout=separate would load the reference unquantized; use ppo.layout=shared with qlora")
    if cfg.method == "ptuning" and d.packing and stage == "sft":
        errors.append(
            "method 'ptuning' cannot be combined with data.packing=true: the virtual-token prefix is shared by "
            "the whole row, so packed examples would share it; set data.packing=false"
        )
    if cfg.method == "ptuning" and m.gradient_checkpointing:
        errors.append("method 'ptuning' does not support model.gradient_checkpointing (peft prefix caches)")
    if t.mixed_precision == "fp16" and m.dtype == "bfloat16":
        errors.append("train.mixed_precision=fp16 with model.dtype=bfloat16 mixes two half formats; pick one")
    if (
        m.dtype in ("bfloat16", "float16")
        and cfg.method in ("full", "freeze", "embedding")
        and t.mixed_precision == "no"
    ):
        errors.append(
            f"training {cfg.method} weights stored in {m.dtype} with mixed_precision=no loses updates to rounding; "
            "use model.dtype=float32 with train.mixed_precision=bf16"
        )
    return errors


def validate(cfg: Config, stage: str) -> Config:
    """Check the sections `stage` reads (each section's own `check()`) and the rules joining them; every problem is
    reported at once, before any weights load. Sections the stage does not read are not judged: one YAML file may
    serve several verbs."""
    # A section with nothing to check (model, quant, chat, rm) has no check().
    checks = [getattr(getattr(cfg, name), "check", list) for name in sections(stage) if name != "method"]
    errors = [msg for check in checks for msg in check()]
    errors += _combinations(cfg, stage)
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg
