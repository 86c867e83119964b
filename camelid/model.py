"""Load a base model and put a fine-tuning method on it; save, reload and merge what was trained.

Methods (one visible if/elif in `apply_method`):
- full       every weight trains;
- freeze     only the last n transformer blocks train, optionally only named submodules of them
             (e.g. `freeze.modules=[mlp]`), plus any `freeze.extra` parameters by name;
- lora       peft LoRA on named or all linear layers (rsLoRA and DoRA switches);
- qlora      the base quantized to 4-bit NF4 by bitsandbytes, LoRA on top (works on CPU too);
- ptuning    P-Tuning v2: trained key/value prefixes at every layer (peft prefix tuning);
- embedding  the input embeddings and output head only (e.g. after extending the vocabulary).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from camelid import hub
from camelid.data.templates import ensure_template
from camelid.utils import CamelidError, log, require

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def load_tokenizer(model_cfg, path: str | None = None):
    src = path or hub.resolve_model(model_cfg.name)
    tok = AutoTokenizer.from_pretrained(src, trust_remote_code=model_cfg.trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise CamelidError(f"{src}: camelid needs a fast (Rust) tokenizer to compute loss masks from offsets")
    ensure_template(tok, model_cfg.template)
    if tok.pad_token_id is None:
        # Padding is always masked out of the loss and attention, so reusing EOS is safe.
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg, path: str | None = None):
    """The base model with `cfg.method` applied, ready to train."""
    m = cfg.model
    src = path or hub.resolve_model(m.name)
    kwargs = {"dtype": DTYPES[m.dtype], "attn_implementation": m.attn_implementation, "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation == "flash_attention_2":
        require("flash_attn", "flash")
    if cfg.method == "qlora":
        kwargs["quantization_config"] = _bnb_config(cfg)
    model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return apply_method(model, cfg)


def _bnb_config(cfg):
    require("bitsandbytes", "qlora")
    from transformers import BitsAndBytesConfig

    q = cfg.quant
    compute = DTYPES[cfg.model.dtype] if cfg.model.dtype != "auto" else torch.float32
    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The stack of decoder blocks, found as the ModuleList as long as the config's layer count."""
    n = model.config.num_hidden_layers
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise CamelidError(f"could not find the {n} transformer blocks of {type(model).__name__}")


def apply_method(model, cfg):
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
    elif method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        lc = cfg.lora
        if method == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.model.gradient_checkpointing)
        target = "all-linear" if lc.target == ["all-linear"] else lc.target
        model = get_peft_model(model, LoraConfig(
            r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=target,
            use_rslora=lc.rslora, use_dora=lc.dora, task_type="CAUSAL_LM",
        ))
    elif method == "ptuning":
        from peft import PrefixTuningConfig, get_peft_model

        pc = cfg.ptuning
        model = get_peft_model(model, PrefixTuningConfig(
            num_virtual_tokens=pc.virtual_tokens, prefix_projection=pc.projection,
            encoder_hidden_size=pc.projection_hidden, task_type="CAUSAL_LM",
        ))
    else:  # config validation keeps this unreachable
        raise CamelidError(f"unknown method '{method}'")
    trainable, total = count_parameters(model)
    log.info(f"method {method}: {trainable:,} trainable of {total:,} parameters ({trainable / total:.3%})")
    return model


def count_parameters(model) -> tuple[int, int]:
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


def save_trained(model, tokenizer, out: Path, cfg, state_dict: dict | None = None) -> None:
    """Adapters as peft folders, other methods as full HF folders; the tokenizer (with its chat
    template) is saved beside either, so chat/serve/vLLM use the template training used.
    `state_dict` is the gathered one when training was sharded."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), **({"state_dict": state_dict} if state_dict is not None else {}))
    tokenizer.save_pretrained(str(out))
    info = {"method": cfg.method, "base_model": cfg.model.name, "base_path": hub.resolve_model(cfg.model.name)}
    (out / "camelid_model.json").write_text(json.dumps(info, indent=2))


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def load_for_inference(path: str | Path, dtype: str = "auto", merge: bool = True, trust_remote_code: bool = False):
    """(model, tokenizer) from a plain model folder, a catalog name, or an adapter/run folder."""
    path = Path(hub.resolve_model(str(path)))
    if (path / "final").is_dir():  # a run folder: use its final weights
        path = path / "final"
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    ensure_template(tok)
    if is_adapter(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
        if merge and model.peft_config["default"].peft_type.value == "LORA":
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    model.eval()
    return model, tok


def merge_adapter(path: str | Path, out: str | Path, dtype: str = "auto") -> Path:
    """A LoRA run → a plain HF folder (weights + tokenizer + template) that transformers and vLLM load."""
    from camelid.utils import atomic_dir

    src = Path(path)
    if (src / "final").is_dir():
        src = src / "final"
    if not is_adapter(src):
        raise CamelidError(f"{src} holds no adapter (adapter_config.json): nothing to merge")
    cfg = json.loads((src / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA":
        raise CamelidError(f"{src}: a {cfg.get('peft_type')} adapter cannot be merged into weights; serve it as an adapter")
    model, tok = load_for_inference(src, dtype=dtype, merge=True)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
    return Path(out)


# Config fields by which some architectures rescale or cap logits inside their forward.
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def decoder_and_head(model):
    """(decoder, lm_head) when calling them directly computes exactly what the model's forward does."""
    from transformers import PreTrainedModel

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
    return (base.get_decoder(), head) if isinstance(head, torch.nn.Linear) else None
