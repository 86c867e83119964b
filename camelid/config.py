"""Typed, strict configuration: nested dataclasses, YAML files, dotted command-line overrides.

    cfg = load_config("configs/sft_lora.yaml", ["train.lr=1e-4", "lora.r=16"])

Unknown keys fail with the key and the closest valid one; values are checked against the field's
type; `validate(cfg, stage)` rejects impossible combinations before any weights load.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from camelid.utils import CamelidError

Method = Literal["full", "freeze", "lora", "qlora", "ptuning", "embedding"]
METHODS = typing.get_args(Method)


class ConfigError(CamelidError):
    pass


@dataclass
class ModelConfig:
    name: str = ""  # local folder, Hugging Face id, or catalog name (camelid pull --list)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    template: str = ""  # force a built-in chat template; empty = the tokenizer's own
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False  # runs code from the model repo: only when asked by name


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0  # LoRA dropout draws a mask over every adapted input: ~10% of a CPU step, +25% memory
    target: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear
    rslora: bool = False
    dora: bool = False


@dataclass
class QuantConfig:
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True


@dataclass
class FreezeConfig:
    last_n_blocks: int = 2  # train the last n transformer blocks ...
    modules: list[str] = field(default_factory=list)  # ... only these submodules of them (e.g. [mlp]); empty = all
    extra: list[str] = field(default_factory=list)  # other params to train by name substring (e.g. [norm])


@dataclass
class PtuningConfig:
    virtual_tokens: int = 16
    projection: bool = False  # reparameterise the prefix through an MLP (P-Tuning v2 paper, sec. 2.3)
    projection_hidden: int = 256


@dataclass
class EmbeddingConfig:
    # Train only the rows `camelid tok extend` added (method embedding): old rows, and so the logits of old tokens
    # on old-token inputs, stay bit-identical.
    new_rows_only: bool = False
    first_new_id: int = 0  # the first added row; 0 = read it from the model folder's camelid_vocab.json


@dataclass
class TokConfig:
    """`camelid tok train / extend / report`: train a tokenizer, add its vocabulary to a base's."""
    # auto: spm_bpe for `tok train`; for `tok extend`, what fits the base (spm_bpe for SentencePiece bases,
    # otherwise byte-level bpe with the base's own pre-tokenizer)
    kind: Literal["auto", "spm_bpe", "spm_unigram", "bpe", "wordpiece"] = "auto"
    vocab_size: int = 20000
    train: list[str] = field(default_factory=list)  # corpus: .txt / .jsonl files, FOLDER@ENTRY, catalog datasets
    eval: list[str] = field(default_factory=list)  # held-out text for the report (tokens per character before/after)
    eval_split: float = 0.02  # when tok.eval is empty, lines of tok.train held out for the report
    max_lines: int = 0  # train on a seeded sample of this many lines; 0 = all
    seed: int = 0
    byte_fallback: bool = True  # spm: characters outside the vocabulary become UTF-8 byte pieces, not <unk>
    split_digits: bool = True  # every digit its own token (Llama, Chinese-LLaMA)
    character_coverage: float = 0.9995  # spm: rarer characters are left to byte fallback
    min_frequency: int = 2  # bpe / wordpiece: pairs seen fewer times are not merged
    threads: int = 1  # spm: more is faster, but unigram results then depend on the thread count
    max_added: int = 0  # extend: add at most this many domain tokens (in the domain's own order); 0 = all new ones
    resize_model: bool = True  # extend: when BASE is a model, also write it with embeddings grown to the new vocab


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # files, folder@name (LLaMA-Factory), or catalog names
    eval: list[str] = field(default_factory=list)
    eval_split: float = 0.0  # hold out this fraction of train for eval when `eval` is empty
    format: Literal["auto", "alpaca", "sharegpt", "openai", "text", "preference", "prompt"] = "auto"
    max_length: int = 1024
    max_samples: int = 0  # per source; 0 = all
    packing: bool = True
    on_error: Literal["fail", "skip"] = "fail"
    truncation: Literal["right", "drop"] = "right"  # what to do with examples longer than max_length
    system: str = ""  # system prompt added to chats that have none


@dataclass
class TrainConfig:
    output_dir: str = "runs/run"
    lr: float = 2e-4
    epochs: float = 1.0
    max_steps: int = 0  # optimizer steps; 0 = derived from epochs
    batch_size: int = 4  # examples (or packed rows) per micro-batch per device
    grad_accum: int = 1
    warmup_ratio: float = 0.03
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    eval_every: int = 0  # steps; 0 = only at the end
    save_every: int = 0  # steps; 0 = only the final save
    keep_last: int = 2
    log_every: int = 1
    seed: int = 42
    # true: continue from the newest checkpoint in output_dir if the config changes nothing that trained it (see
    # camelid/train/run.py); force: continue whatever changed, recorded in config_history.yaml; false: start over,
    # in a new folder beside output_dir when that one already holds a run
    resume: bool | Literal["force"] = True
    tensorboard: bool = True


@dataclass
class ChatConfig:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1  # small models loop without it
    system: str = ""


@dataclass
class EngineConfig:
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bfloat16 on GPUs and bf16-capable CPUs
    block_size: int = 16  # tokens per KV block: the unit of memory and of prefix reuse
    kv_cache_tokens: int = 0  # KV capacity in tokens; 0 = 85% of free GPU memory, or 2 GiB on CPU
    max_batch_tokens: int = 512  # new tokens per forward (decode tokens + prompt chunks)
    max_running: int = 64  # requests decoding together
    max_model_len: int = 0  # prompt + output; 0 = the model's max_position_embeddings (capped by the cache)
    prefix_cache: bool = True  # reuse KV blocks of identical prefixes (system prompt, earlier session turns)
    # torch CPU threads, set when the engine starts; 0 = torch's default (one per core). On a host shared with other
    # work fewer is faster: on 2 busy cores `generate` ran 3.5x faster with 1 thread than with 2.
    threads: int = 0


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # anything else requires API keys
    port: int = 8000
    model_name: str = ""  # the id clients send as `model`; empty = the folder's name
    api_keys_file: str = ""  # one key per line (`#` comments); also CAMELID_API_KEYS="k1,k2"
    sessions_db: str = "camelid_sessions.sqlite"
    max_body_bytes: int = 1_000_000
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    default_max_tokens: int = 512
    max_concurrent_per_key: int = 16  # generations in flight per API key, a call counting prompts x n; more get 429
    max_n: int = 8
    max_prompts_per_request: int = 64  # prompts in one /v1/completions call; more get 400
    request_timeout: float = 300.0  # seconds; a request still running then is aborted (504 / an error event)
    shutdown_grace: float = 30.0  # seconds in-flight requests get to finish on SIGTERM/SIGINT before abort
    kb: list[str] = field(default_factory=list)  # knowledge bases answered as model "kb:<name>" (names or folders)


@dataclass
class RagConfig:
    root: str = ""  # where knowledge bases live; empty = $CAMELID_HOME/kb
    # A knowledge base is bound to the encoder it was built with (recorded in its kb.json); this picks it at creation.
    embedding_model: str = "all-minilm-l6-v2"  # catalog name, folder or sentence-transformers id
    embedding_batch: int = 64
    chunk_tokens: int = 200  # in the encoder's tokens: all-MiniLM-L6-v2 reads at most 256
    chunk_overlap: int = 32
    retriever: Literal["hybrid", "bm25", "dense"] = "hybrid"
    candidates: int = 40  # per retriever, before fusion
    rrf_k: int = 60  # reciprocal rank fusion: score = sum 1/(rrf_k + rank) (Cormack et al. 2009)
    top_k: int = 4  # chunks put in the prompt (at most; fewer if the context budget is smaller)
    # A chunk is relevant when one retriever vouches for it: cosine >= min_similarity, or the share of the
    # question's BM25 weight (idf) it matches >= min_term_share. Nothing relevant → the "not found" answer.
    min_similarity: float = 0.35
    min_term_share: float = 0.4
    # Dense retrieval sits out a question whose tokens are more than this share [UNK] to the encoder (a language
    # it cannot read: all-MiniLM-L6-v2 and Chinese); camelid/rag/retrieve.py says why.
    max_unknown_share: float = 0.2
    reranker: str = ""  # a cross-encoder (folder or id) to reorder the fused candidates; empty = none
    min_rerank_score: float = float("-inf")  # with a reranker: drop candidates it scores below this
    max_prompt_tokens: int = 0  # cap on the grounded prompt; 0 = the model's context less the answer's tokens
    max_new_tokens: int = 256
    temperature: float = 0.0  # grounded answers: greedy by default
    system: str = ""  # replaces the built-in grounding instruction


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # mmlu, arc_easy, ... or NAME=PATH (a local copy; mc_jsonl=exam.jsonl)
    k_shot: int = 0
    seed: int = 1234  # picks the k-shot examples
    limit: int = 0  # items per task; 0 = all
    batch_tokens: int = 4096  # tokens per scoring forward (rows x padded width)
    perplexity: list[str] = field(default_factory=list)  # text files
    ppl_window: int = 1024
    ppl_stride: int = 512
    samples: str = ""  # prompts (jsonl with "prompt"/"instruction", or .txt one per line) answered and saved
    preference: list[str] = field(default_factory=list)  # preference pairs a reward model is scored on (accuracy)
    max_new_tokens: int = 128
    after_training: bool = True  # when anything above is set, sft/pt end by evaluating the base and the run


@dataclass
class RmConfig:
    margin: float = 0.0  # subtract from the chosen−rejected gap in the loss (a fixed margin, as in Llama 2's RM)


@dataclass
class DpoConfig:
    beta: float = 0.1  # strength of the KL tie to the reference (DPO's β; IPO's τ)
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: float = 0.0  # cDPO: the share of pairs assumed to be mislabelled (sigmoid loss only)
    precompute_ref: bool = False  # score every pair with the reference once before training, then drop it


@dataclass
class PpoConfig:
    reward_model: str = ""  # a `camelid rm` run or a ...ForSequenceClassification folder
    layout: Literal["shared", "separate"] = "shared"  # LoRA: actor, critic and reference on one base (adapters on/off)
    rollout_batch: int = 8  # prompts sampled per PPO update (one "episode" each)
    mini_batch: int = 4  # episodes per optimizer step inside an update
    ppo_epochs: int = 4  # passes over each rollout batch
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    kl_coef: float = 0.05  # β of the per-token KL penalty to the reference
    adaptive_kl: bool = False  # Ziegler et al. 2019: steer β so the KL tracks target_kl
    target_kl: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95  # GAE λ
    clip_range: float = 0.2  # PPO's ε for the policy ratio
    value_clip: float = 0.2  # the critic's values move at most this far from the rollout's per update
    vf_coef: float = 0.1
    critic_lr: float = 0.0  # 0 = train.lr
    whiten_rewards: bool = False  # normalise per-token rewards over the batch before GAE
    reward_clip: float = 10.0  # clip the reward model's score to ±this; 0 = no clipping
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses cut at max_new_tokens
    ptx_data: list[str] = field(default_factory=list)  # PPO-ptx (InstructGPT): pretraining / SFT data mixed in
    ptx_coef: float = 0.0  # weight γ of that language-model loss
    ptx_batch: int = 4


PiiKind = Literal["email", "phone", "id_card", "bank_card"]


@dataclass
class CleanConfig:
    """`camelid clean`. Documents meet the rules in the order below; the first rule that fires removes one."""
    inputs: list[str] = field(default_factory=list)  # .txt (a document per line) / .jsonl / .json / .csv / .parquet, or catalog corpora
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
    repeat_ngram: int = 10
    languages: list[Literal["zh", "en"]] = field(default_factory=lambda: ["zh", "en"])  # zh: Han, en: Latin; [] = any
    min_language_share: float = 0.5  # of a document's units, in the scripts of `languages`
    # decontamination: documents sharing an n-gram with a benchmark question go
    decontaminate: list[str] = field(default_factory=list)  # eval tasks as in eval.tasks: mmlu, mc_jsonl=exam.jsonl
    decontam_ngram: int = 13  # units, for questions written mostly in words (GPT-3's 13-gram rule)
    decontam_ngram_zh: int = 25  # for questions mostly in Chinese characters: 13 characters are a common phrase
    # perplexity under a character n-gram LM (interpolated Kneser-Ney) trained on a reference corpus
    ppl_reference: list[str] = field(default_factory=list)  # text files or catalog corpora of text you want; [] = off
    ppl_order: int = 5
    ppl_max: float = 0.0  # drop documents above this char perplexity; 0 = the ppl_quantile of held-out reference docs
    ppl_quantile: float = 0.99
    ppl_min_units: int = 10  # shorter documents are not judged (their perplexity is noise)
    # near-duplicates: MinHash-LSH over character shingles (datasketch, the `clean` extra); last, as the costliest
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8  # estimated Jaccard similarity of the shingle sets
    minhash_perm: int = 128
    shingle: int = 5  # characters per shingle (works without word segmentation, so for zh too)
    # PII: masked in the documents kept
    pii: list[PiiKind] = field(default_factory=lambda: ["email", "phone", "id_card", "bank_card"])


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Method = "lora"
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


# ---------------------------------------------------------------------------------------------
# building from dicts


# Names people bring from transformers / LLaMA-Factory, so a near miss of those still finds our key.
ALIASES = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lora_rank": "r", "rank": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target",
    "lora_target": "target", "model_name_or_path": "name", "cutoff_len": "max_length", "max_seq_length": "max_length",
    "lr_scheduler_type": "scheduler", "max_grad_norm": "max_grad_norm", "bf16": "mixed_precision",
    "dataset": "train", "template": "template", "finetuning_type": "method",
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


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# combinations that cannot work, caught before any weights load

def validate(cfg: Config, stage: str) -> Config:
    t, d, m = cfg.train, cfg.data, cfg.model
    errors = []
    if stage in ("pt", "sft", "rm", "dpo", "ppo", "chat") and not m.name:
        errors.append("model.name is required (a folder, a Hugging Face id, or a catalog name)")
    if stage in ("pt", "sft", "rm", "dpo", "ppo") and not d.train:
        errors.append("data.train needs at least one source")
    if cfg.embedding.new_rows_only and stage in ("pt", "sft", "rm", "dpo", "ppo"):
        if cfg.method != "embedding":
            errors.append(f"embedding.new_rows_only trains only the new embedding rows, so it needs method embedding "
                          f"(method is '{cfg.method}')")
        if t.weight_decay > 0:
            # AdamW decays every row of a matrix that has a gradient, masked or not: old rows would shrink.
            errors.append("embedding.new_rows_only needs train.weight_decay=0: AdamW's decay would move the old rows too")
    if stage == "rm" and (cfg.eval.tasks or cfg.eval.perplexity or cfg.eval.samples):
        errors.append("a reward model is evaluated with eval.preference only (it does not generate or score text)")
    if stage in ("pt", "sft", "dpo", "ppo") and cfg.eval.preference:
        errors.append("eval.preference scores reward models; it belongs to the rm stage")
    if stage == "rm" and cfg.method not in ("full", "freeze", "lora", "qlora"):
        errors.append(f"method '{cfg.method}' cannot train a reward model; use full, freeze, lora or qlora")
    if stage == "ppo":
        p = cfg.ppo
        if cfg.method not in ("full", "freeze", "lora", "qlora"):
            errors.append(f"method '{cfg.method}' is not supported by ppo; use full, freeze, lora or qlora")
        if p.rollout_batch % p.mini_batch:
            errors.append(f"ppo.rollout_batch ({p.rollout_batch}) must be a multiple of ppo.mini_batch ({p.mini_batch})")
        if p.ptx_coef > 0 and not p.ptx_data:
            errors.append("ppo.ptx_coef > 0 needs ppo.ptx_data")
        if p.layout == "shared" and cfg.method not in ("lora", "qlora"):
            errors.append("ppo.layout=shared needs method lora or qlora (adapters switched on one base); "
                          "use ppo.layout=separate for full or freeze")
        if p.layout == "separate" and cfg.method == "qlora":
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
    if m.dtype in ("bfloat16", "float16") and cfg.method in ("full", "freeze", "embedding") and t.mixed_precision == "no":
        errors.append(
            f"training {cfg.method} weights stored in {m.dtype} with mixed_precision=no loses updates to rounding; "
            "use model.dtype=float32 with train.mixed_precision=bf16"
        )
    checks = [
        (t.lr > 0, "train.lr must be > 0"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (t.max_steps > 0 or t.epochs > 0, "set train.max_steps or train.epochs"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (t.keep_last >= 1, "train.keep_last must be >= 1"),
        (0 <= d.eval_split < 1, "data.eval_split must be in [0, 1)"),
        (d.max_length >= 8, "data.max_length must be >= 8"),
        (cfg.lora.r >= 1, "lora.r must be >= 1"),
        (cfg.freeze.last_n_blocks >= 0, "freeze.last_n_blocks must be >= 0"),
        (cfg.ptuning.virtual_tokens >= 1, "ptuning.virtual_tokens must be >= 1"),
        (cfg.engine.block_size >= 1, "engine.block_size must be >= 1"),
        (cfg.eval.k_shot >= 0, "eval.k_shot must be >= 0"),
        (0 < cfg.eval.ppl_stride <= cfg.eval.ppl_window, "eval.ppl_stride must be in [1, eval.ppl_window]"),
        (cfg.engine.max_batch_tokens >= 1, "engine.max_batch_tokens must be >= 1"),
        (cfg.dpo.beta > 0, "dpo.beta must be > 0"),
        (0 <= cfg.dpo.label_smoothing < 0.5, "dpo.label_smoothing must be in [0, 0.5)"),
        (cfg.ppo.rollout_batch >= 1 and cfg.ppo.mini_batch >= 1, "ppo.rollout_batch and ppo.mini_batch must be >= 1"),
        (cfg.ppo.ppo_epochs >= 1, "ppo.ppo_epochs must be >= 1"),
        (cfg.ppo.max_new_tokens >= 1, "ppo.max_new_tokens must be >= 1"),
        (cfg.ppo.kl_coef >= 0, "ppo.kl_coef must be >= 0"),
        (0 <= cfg.ppo.lam <= 1 and 0 <= cfg.ppo.gamma <= 1, "ppo.lam and ppo.gamma must be in [0, 1]"),
        (cfg.ppo.clip_range > 0 and cfg.ppo.value_clip > 0, "ppo.clip_range and ppo.value_clip must be > 0"),
        (cfg.engine.max_running >= 1, "engine.max_running must be >= 1"),
        (cfg.serve.max_concurrent_per_key >= 1, "serve.max_concurrent_per_key must be >= 1"),
        (0 < cfg.serve.default_max_tokens <= cfg.serve.max_tokens, "serve.default_max_tokens must be in [1, serve.max_tokens]"),
        (cfg.embedding.first_new_id >= 0, "embedding.first_new_id must be >= 0"),
        (cfg.tok.vocab_size >= 2, "tok.vocab_size must be >= 2"),
        (0 <= cfg.tok.eval_split < 1, "tok.eval_split must be in [0, 1)"),
        (0 < cfg.tok.character_coverage <= 1, "tok.character_coverage must be in (0, 1]"),
        (cfg.tok.max_lines >= 0 and cfg.tok.max_added >= 0, "tok.max_lines and tok.max_added must be >= 0"),
        (cfg.tok.threads >= 1 and cfg.tok.min_frequency >= 1, "tok.threads and tok.min_frequency must be >= 1"),
    ]
    if stage == "kb":
        r = cfg.rag
        checks += [
            (r.chunk_tokens >= 16, "rag.chunk_tokens must be >= 16"),
            (0 <= r.chunk_overlap < r.chunk_tokens // 2, "rag.chunk_overlap must be in [0, rag.chunk_tokens / 2)"),
            (r.top_k >= 1 and r.candidates >= r.top_k, "rag.top_k must be >= 1 and rag.candidates >= rag.top_k"),
            (r.rrf_k >= 1 and r.embedding_batch >= 1, "rag.rrf_k and rag.embedding_batch must be >= 1"),
            (-1 <= r.min_similarity <= 1, "rag.min_similarity must be in [-1, 1]"),
            (0 <= r.max_unknown_share <= 1, "rag.max_unknown_share must be in [0, 1]"),
            (0 <= r.min_term_share <= 1, "rag.min_term_share must be in [0, 1]"),
            (r.max_new_tokens >= 1 and r.max_prompt_tokens >= 0, "rag.max_new_tokens must be >= 1 and rag.max_prompt_tokens >= 0"),
        ]
    if stage == "clean":
        c = cfg.clean
        checks += [
            (bool(c.inputs), "clean.inputs needs at least one file (camelid clean FILE ...)"),
            (c.min_units >= 0 and c.max_units >= 0, "clean.min_units and clean.max_units must be >= 0"),
            (c.max_units == 0 or c.max_units >= c.min_units, "clean.max_units must be 0 or >= clean.min_units"),
            (all(0 <= v <= 1 for v in (c.max_symbol_share, c.max_digit_share, c.max_repeated_line_share,
                                       c.max_repeated_ngram_share, c.min_language_share)),
             "clean.*_share values must be in [0, 1]"),
            (c.repeat_ngram >= 2, "clean.repeat_ngram must be >= 2"),
            (c.decontam_ngram >= 1 and c.decontam_ngram_zh >= 1, "clean.decontam_ngram(_zh) must be >= 1"),
            (0 < c.near_dedup_threshold <= 1, "clean.near_dedup_threshold must be in (0, 1]"),
            (c.minhash_perm >= 16, "clean.minhash_perm must be >= 16"),
            (c.shingle >= 1, "clean.shingle must be >= 1"),
            (2 <= c.ppl_order <= 8, "clean.ppl_order must be in [2, 8]"),
            (c.ppl_max >= 0, "clean.ppl_max must be >= 0 (0 = from the reference)"),
            (0 < c.ppl_quantile < 1, "clean.ppl_quantile must be in (0, 1)"),
        ]
    errors += [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg
