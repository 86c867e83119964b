"""Load a base model and put a fine-tuning method on it; save, reload and merge what was trained.

Methods (one visible if/elif in `apply_method`):
- full       every weight trains;
- freeze     only the last n transformer blocks train, optionally only named submodules of them
             (e.g. `freeze.modules=[mlp]`), plus any `freeze.extra` parameters by name;
- lora       peft LoRA on named or all linear layers (rsLoRA and DoRA switches);
- qlora      the base quantized to 4-bit NF4 by bitsandbytes, LoRA on top (works on CPU too);
- ptuning    P-Tuning v2: trained key/value prefixes at every layer (peft prefix tuning);
- embedding  the input embeddings and output head only (e.g. after extending the vocabulary), optionally only
             the rows `camelid tok extend` added (`embedding.new_rows_only`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from camelid import hub
from camelid.config import Config
from camelid.data.templates import ensure_template
from camelid.lora_dropout import use_hash_dropout
from camelid.utils import CamelidError, atomic_dir, log, require

if TYPE_CHECKING:
    from peft import PeftModel

VOCAB_INFO = "camelid_vocab.json"  # written by `camelid tok extend` beside the resized model
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
# What the loaders return: a transformers model, or a peft model around one (lora, qlora, ptuning, unmerged adapters).
Model = Union[PreTrainedModel, "PeftModel"]


def load_tokenizer(
    name_or_path: str | Path, template: str = "", trust_remote_code: bool = False, *, as_saved: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, catalog name, Hugging Face id or run folder (its final/), for training,
    inference and reward models alike: the chat template `template` names (a built-in), else its own, else the
    closest built-in; EOS as the pad token when it has none (padding is always masked out of the loss and
    attention, so reusing EOS is safe). `as_saved=True` adds neither, for `camelid tok`, which compares and re-saves
    tokenizers and must not change them. Only fast tokenizers: loss masks and chat prompts are cut by character
    offsets, which slow ones do not give (chat and serve would otherwise fail later, mid-request)."""
    src = hub.model_folder(name_or_path)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise CamelidError(
            f"{src}: camelid needs a fast (Rust) tokenizer to compute loss masks and prompts from character offsets"
        )
    if not as_saved:
        ensure_template(tok, template)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: Config, path: str | None = None, reward: bool = False, pad_token_id: int | None = None) -> Model:
    """The base model with `cfg.method` applied, ready to train. `reward=True` gives the reward-model shape:
    the base's decoder with a new scalar head reading the last non-pad token (`...ForSequenceClassification`,
    one label), so the trained model is a standard HF sequence classifier; `pad_token_id` tells it where rows end."""
    m = cfg.model
    src = path or hub.model_folder(m.name)
    kwargs = {
        "dtype": DTYPES[m.dtype],
        "attn_implementation": m.attn_implementation,
        "trust_remote_code": m.trust_remote_code,
    }
    if m.attn_implementation == "flash_attention_2":
        require("flash_attn", "flash")
    if cfg.method == "qlora":
        kwargs["quantization_config"] = _bnb_config(cfg)
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    if reward:
        kwargs |= {"num_labels": 1, "pad_token_id": pad_token_id}
    if hub.adapter_config(src) is not None:
        # Training on from an adapter run (pt LoRA → sft): its adapter is merged in first, so the new method starts
        # from what that run learned, and the new adapter records the run as its base (load_for_inference merges
        # it again on the way).
        if cfg.method == "qlora":
            raise CamelidError(
                f"{src} is an adapter run: QLoRA needs plain weights to quantize; merge it first "
                f"(camelid export {m.name} OUT) and set model.name=OUT"
            )
        model = merged_weights(Path(src), cls, kwargs)
        model.name_or_path = model.config._name_or_path = str(Path(src).resolve())  # peft records it as the base
    else:
        model = cls.from_pretrained(src, **kwargs)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return apply_method(model, cfg, task="SEQ_CLS" if reward else "CAUSAL_LM")


def _bnb_config(cfg: Config):
    require("bitsandbytes", "qlora")
    from transformers import BitsAndBytesConfig

    q = cfg.quant
    compute = DTYPES[cfg.model.dtype] if cfg.model.dtype != "auto" else torch.float32
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def transformer_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The stack of decoder blocks, found as the ModuleList as long as the config's layer count."""
    n = model.config.num_hidden_layers
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise CamelidError(f"could not find the {n} transformer blocks of {type(model).__name__}")


def apply_method(model: PreTrainedModel, cfg: Config, task: str = "CAUSAL_LM") -> Model:
    """`task` is peft's: CAUSAL_LM, or SEQ_CLS for reward models (whose new score head then always trains)."""
    method = cfg.method
    if method == "full":
        model.requires_grad_(True)
    elif method == "freeze":
        model.requires_grad_(False)
        blocks = transformer_blocks(model)
        f = cfg.freeze
        if f.last_n_blocks > len(blocks):
            raise CamelidError(f"freeze.last_n_blocks={f.last_n_blocks} but the model has {len(blocks)} blocks")
        for block in list(blocks)[len(blocks) - f.last_n_blocks :]:
            for name, p in block.named_parameters():
                if not f.modules or any(part in name.split(".") for part in f.modules):
                    p.requires_grad_(True)
        for name, p in model.named_parameters():
            if any(x in name for x in f.extra):
                p.requires_grad_(True)
    elif method == "embedding":
        model.requires_grad_(False)
        model.get_input_embeddings().weight.requires_grad_(True)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.requires_grad_(True)  # same tensor as the embeddings when they are tied
        if cfg.embedding.new_rows_only:
            mask_old_rows(model, cfg.embedding.first_new_id or first_new_id(model.name_or_path))
    elif method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        lc = cfg.lora
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
            keep_4bit_differentiable(model)
        target = "all-linear" if lc.target == ["all-linear"] else lc.target
        model = get_peft_model(
            model,
            LoraConfig(
                r=lc.r,
                lora_alpha=lc.alpha,
                lora_dropout=lc.dropout,
                target_modules=target,
                use_rslora=lc.rslora,
                use_dora=lc.dora,
                task_type=task,
            ),
        )
        use_hash_dropout(model)  # the same dropout, its masks drawn ~4x faster on the CPU
    elif method == "ptuning":
        from peft import PrefixTuningConfig, get_peft_model

        pc = cfg.ptuning
        model = get_peft_model(
            model,
            PrefixTuningConfig(
                num_virtual_tokens=pc.virtual_tokens,
                prefix_projection=pc.projection,
                encoder_hidden_size=pc.projection_hidden,
                task_type="CAUSAL_LM",
            ),
        )
    else:  # config validation keeps this unreachable
        raise CamelidError(f"unknown method '{method}'")
    if task == "SEQ_CLS" and method in ("freeze", "embedding"):
        model.score.requires_grad_(True)  # the head is new: a frozen random head would make training meaningless
    trainable, total = count_parameters(model)
    log.info(f"method {method}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.3%})")
    return model


def keep_4bit_differentiable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    It repacks a layer the first time it runs in eval mode without grad (an eval step, PPO's rollouts) and keeps
    the packed form; that kernel has no backward, so training after it silently drops the gradient through every
    frozen base layer. Inference-only loads keep the faster kernel.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def first_new_id(folder: str | Path) -> int:
    """The first row `camelid tok extend` added to the model in `folder` (from its camelid_vocab.json)."""
    info = Path(folder) / VOCAB_INFO
    if not info.is_file():
        raise CamelidError(
            f"embedding.new_rows_only: {folder} has no {VOCAB_INFO} saying which rows are new "
            "(written by `camelid tok extend`); set embedding.first_new_id"
        )
    return int(json.loads(info.read_text())["first_new_id"])


def mask_old_rows(model: PreTrainedModel, first: int) -> None:
    """Zero the gradient of embedding and output-head rows below `first` in every backward pass. From the
    first step on, AdamW then keeps zero moments for those rows and (with weight decay 0, which config validation
    demands) moves them by exactly 0: old tokens keep their vectors bit for bit."""
    rows = model.get_input_embeddings().num_embeddings
    if not 0 < first < rows:
        raise CamelidError(f"embedding.new_rows_only: first new row {first} is not inside the {rows} embedding rows")
    head = model.get_output_embeddings()
    weights = {id(w): w for w in [model.get_input_embeddings().weight] + ([head.weight] if head is not None else [])}
    for w in weights.values():  # tied embeddings are one tensor: one hook
        keep = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
        keep[first:] = 1
        w.register_hook(lambda grad, keep=keep: grad * keep)
    log.info(f"training embedding rows {first:,}..{rows - 1:,} only; rows below stay fixed")


@torch.no_grad()
def resize_embeddings(
    model: PreTrainedModel, old_tok: PreTrainedTokenizerBase, new_tok: PreTrainedTokenizerBase
) -> int:
    """Grow the input embeddings and output head to `len(new_tok)` rows. Each new row starts as the mean of the old
    rows of the pieces the old tokenizer cuts that token's text into (the output head likewise, tied or not), so a
    new token starts out meaning what its pieces meant. Old rows are untouched: old-token logits stay the same.
    Rows the model already had beyond `len(old_tok)` (vocabularies padded to a multiple of 64) are reused.
    Returns the number of rows initialised."""
    first, n = len(old_tok), len(new_tok)
    emb = model.get_input_embeddings()
    if n < first:
        raise CamelidError(f"the new tokenizer ({n}) is smaller than the old one ({first})")
    if n > emb.num_embeddings:
        model.resize_token_embeddings(n, mean_resizing=False)  # rows overwritten below
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings()
    tied = head is not None and head.weight is emb
    old_model = old_tok.backend_tokenizer.model
    for i in range(first, n):
        pieces = [t.id for t in old_model.tokenize(new_tok.convert_ids_to_tokens(i))]
        pieces = [p for p in pieces if p < first] or list(range(first))  # nothing spells it: the mean of all rows
        emb[i] = emb[pieces].mean(0)
        if head is not None and not tied:
            head.weight[i] = head.weight[pieces].mean(0)
            if head.bias is not None:
                head.bias[i] = head.bias[pieces].mean(0)
    return n - first


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # packed 4-bit: two weights a byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


# ---------------------------------------------------------------------------------------------
# saving and loading what was trained


def save_trained(
    model: Model, tokenizer: PreTrainedTokenizerBase, out: Path, cfg: Config, state_dict: dict | None = None
) -> None:
    """Adapters as peft folders, other methods as full HF folders; the tokenizer (with its chat
    template) is saved beside either, so chat/serve/vLLM use the template training used.
    `state_dict` is the gathered one when training was sharded. Written to a temp folder and renamed, so a crash
    never leaves a half-written final/ (nor a stale one with new files mixed in)."""
    info = {"method": cfg.method, "base_model": cfg.model.name, "base_path": hub.model_folder(cfg.model.name)}
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "camelid_model.json").write_text(json.dumps(info, indent=2))
        vocab_info = Path(info["base_path"]) / VOCAB_INFO
        if vocab_info.is_file():  # which rows a vocabulary extension added, for a later embedding.new_rows_only run
            shutil.copyfile(vocab_info, tmp / VOCAB_INFO)


def adapter_base(path: Path, adapter: dict) -> str:
    """Where the base model of the adapter folder `path` (whose adapter_config.json is `adapter`) loads from, checked
    like model.name (a moved or deleted base folder fails here, naming it, instead of being looked up on the Hub)."""
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise CamelidError(f"{path / 'adapter_config.json'} names no base model (base_model_name_or_path)")
    try:
        return hub.resolve_model(base)
    except CamelidError as e:
        raise CamelidError(f"{path} is an adapter over {base}, which cannot be loaded: {e}") from None


def merged_weights(folder: Path, cls, kwargs: dict) -> PreTrainedModel:
    """The weights a folder stands for, as plain `cls` weights: a model folder as it is; a LoRA run or adapter
    folder merged into its base, which may itself be such a run (pt LoRA → sft LoRA → ...), merged first.
    (transformers alone would attach the adapter unmerged under the name "default", which the next adapter of the
    same name then replaces: a pt LoRA run under an sft LoRA run was silently dropped that way.)"""
    folder = Path(hub.model_folder(folder))
    adapter = hub.adapter_config(folder)
    if adapter is None:
        return cls.from_pretrained(str(folder), **kwargs)
    if adapter.get("peft_type") != "LORA":
        raise CamelidError(f"{folder}: a {adapter.get('peft_type')} adapter cannot be merged into a base to train on")
    from peft import PeftModel

    base = merged_weights(Path(adapter_base(folder, adapter)), cls, kwargs)
    vocab = len(load_tokenizer(folder, trust_remote_code=kwargs.get("trust_remote_code", False), as_saved=True))
    if vocab > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def load_for_inference(
    path: str | Path, dtype: str = "auto", merge: bool = True, trust_remote_code: bool = False
) -> tuple[Model, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a plain model folder, a catalog name, or an adapter/run folder."""
    path = Path(hub.model_folder(path))
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    adapter = hub.adapter_config(path)
    if adapter is not None:
        from peft import PeftModel

        base = merged_weights(
            Path(adapter_base(path, adapter)),
            AutoModelForCausalLM,
            {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code},
        )
        if len(tok) > base.get_input_embeddings().weight.shape[0]:  # as peft's AutoPeftModel does
            base.resize_token_embeddings(len(tok))
        model = PeftModel.from_pretrained(base, str(path))
        if merge and model.peft_config["default"].peft_type.value == "LORA":
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
        )
    model.eval()
    return model, tok


def is_reward_model(path: str | Path) -> bool:
    """A sequence-classification folder, or a peft adapter trained on one (a `camelid rm` LoRA run)."""
    path = Path(hub.model_folder(path))
    adapter = hub.adapter_config(path)
    if adapter is not None:
        return adapter.get("task_type") == "SEQ_CLS"
    config = path / "config.json"
    if not config.is_file():
        return False
    return any(
        a.endswith("ForSequenceClassification") for a in json.loads(config.read_text()).get("architectures") or []
    )


def load_reward_model(
    path: str | Path, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[Model, PreTrainedTokenizerBase]:
    """(reward model, tokenizer): a sequence classifier whose logits[:, 0] is the reward of each row.
    A LoRA reward model is merged into its base on load."""
    path = Path(hub.model_folder(path))
    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    adapter = hub.adapter_config(path)
    if adapter is not None:
        from peft import PeftModel

        kwargs |= {"num_labels": 1, "pad_token_id": tok.pad_token_id}
        model = merged_weights(Path(adapter_base(path, adapter)), AutoModelForSequenceClassification, kwargs)
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    if model.config.num_labels != 1:
        raise CamelidError(f"{path}: a reward model has one output, this classifier has {model.config.num_labels}")
    return model.eval(), tok


def merge_adapter(path: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """A LoRA run → a plain HF folder (weights + tokenizer + template) that transformers and vLLM load;
    a LoRA reward model → a plain `...ForSequenceClassification` folder."""
    src = Path(hub.model_folder(path))
    adapter = hub.adapter_config(src)
    if adapter is None:
        raise CamelidError(f"{src} holds no adapter (adapter_config.json): nothing to merge")
    if adapter.get("peft_type") != "LORA":
        raise CamelidError(
            f"{src}: a {adapter.get('peft_type')} adapter cannot be merged into weights; serve it as an adapter"
        )
    if adapter.get("task_type") == "SEQ_CLS":
        model, tok = load_reward_model(src, dtype=dtype)
    else:
        model, tok = load_for_inference(src, dtype=dtype, merge=True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return Path(out)


# Config fields by which some architectures rescale or cap logits inside their forward.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, lm_head) when calling them directly computes exactly what the model's forward does."""
    base = model
    if type(model).__name__ == "PeftModelForCausalLM":
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None  # prefix tuning injects its past key/values in the peft forward
        base = model.get_base_model()
    if not isinstance(base, PreTrainedModel) or not hasattr(base, "get_decoder"):
        return None  # DDP / FSDP / DeepSpeed wrappers, or anything unknown
    if any(getattr(base.config, k, None) not in (None, 1, 1.0) for k in _LOGIT_POSTPROCESSING):
        return None
    head = base.get_output_embeddings()
    linear = isinstance(head, torch.nn.Linear) or isinstance(
        getattr(head, "base_layer", None), torch.nn.Linear
    )  # LoRA on it
    return (base.get_decoder(), head) if linear else None
