"""What each config key means for a training run being continued: the rules behind `train.resume` (run.py) and
behind a recipe resuming, rather than restarting, a stage whose changed keys only extend the run.

Light on purpose (config only, no torch): `camelid run` plans with it before any stage process starts.
"""

from __future__ import annotations

from camelid.config import Config, flatten, to_dict

# What each key means for a run being continued, section by section. Every key of a section that shapes training
# is named in one of the two tables (a test checks it), so a new key has to be placed on purpose.
# Locked: a change alters the optimisation or the data the checkpoints were trained on.
RESUME_LOCKED: dict[str, tuple[str, ...]] = {
    "": ("method",),
    "model": ("name", "dtype", "template", "trust_remote_code"),
    "data": (
        "train",
        "eval",
        "eval_split",
        "format",
        "max_length",
        "max_samples",
        "packing",
        "on_error",
        "truncation",
        "system",
    ),
    "train": (
        "lr",
        "batch_size",
        "grad_accum",
        "warmup_ratio",
        "scheduler",
        "weight_decay",
        "max_grad_norm",
        "mixed_precision",
        "seed",
    ),
    "lora": ("r", "alpha", "dropout", "target", "rslora", "dora"),
    "quant": ("bits", "quant_type", "double_quant"),
    "freeze": ("last_n_blocks", "modules", "extra"),
    "ptuning": ("virtual_tokens", "projection", "projection_hidden"),
    "embedding": ("new_rows_only", "first_new_id"),
    "rm": ("margin",),
    "dpo": ("beta", "loss", "label_smoothing"),
    "ppo": (
        "reward_model",
        "layout",
        "rollout_batch",
        "mini_batch",
        "ppo_epochs",
        "max_new_tokens",
        "temperature",
        "top_p",
        "top_k",
        "kl_coef",
        "adaptive_kl",
        "target_kl",
        "kl_horizon",
        "gamma",
        "lam",
        "clip_range",
        "value_clip",
        "vf_coef",
        "critic_lr",
        "whiten_rewards",
        "reward_clip",
        "missing_eos_penalty",
        "ptx_data",
        "ptx_coef",
        "ptx_batch",
    ),
}
# Free: a change extends the run (more steps or epochs; the schedule is stretched to the new length), or only
# changes how it is watched, saved or computed (same maths).
RESUME_FREE: dict[str, tuple[str, ...]] = {
    "model": ("attn_implementation", "gradient_checkpointing"),
    "train": (
        "output_dir",
        "max_steps",
        "epochs",
        "eval_every",
        "save_every",
        "keep_last",
        "log_every",
        "resume",
        "tensorboard",
    ),
    "dpo": ("precompute_ref",),
}
# Sections that matter only to the method or stage using them: a method's options change nothing under another
# method (lora.r under method full), nor dpo.beta in an sft run.
METHOD_SECTIONS = {
    "lora": ("lora",),
    "qlora": ("lora", "quant"),
    "freeze": ("freeze",),
    "ptuning": ("ptuning",),
    "embedding": ("embedding",),
    "full": (),
}
STAGE_SECTIONS = {"rm": ("rm",), "dpo": ("dpo",), "ppo": ("ppo",)}
# Sections that never shape training (evaluation after it, serving, other verbs): changes are recorded only.
UNRELATED = ("chat", "engine", "serve", "eval", "clean", "tok", "rag")


def classify(key: str, cfg: Config, stage: str) -> str:
    """'locked', 'free' or 'unrelated' for a dotted config key, in a run of `stage` with `cfg.method`."""
    section, _, name = key.rpartition(".")
    if section in UNRELATED:
        return "unrelated"
    if section in {s for m in METHOD_SECTIONS.values() for s in m} and section not in METHOD_SECTIONS[cfg.method]:
        return "unrelated"
    if section in {s for m in STAGE_SECTIONS.values() for s in m} and section not in STAGE_SECTIONS.get(stage, ()):
        return "unrelated"
    if name in RESUME_FREE.get(section, ()):
        return "free"
    # Locked by name, and locked when unknown: a key nobody placed is assumed to matter.
    return "locked"


def config_changes(old: dict, cfg: Config, stage: str) -> dict[str, dict]:
    """{dotted key: {old, new, kind}} for every key of the sections `stage` reads whose value differs from the saved
    config `old`. Keys the saved config lacks (a newer key, or a section it did not record) count as holding today's
    default; sections it holds that the stage does not read (an older camelid saved every section) are not compared."""
    new = flatten(to_dict(cfg, stage))
    before = flatten(to_dict(Config(), stage)) | flatten(old)
    return {
        k: {"old": before.get(k), "new": v, "kind": classify(k, cfg, stage)}
        for k, v in new.items()
        if before.get(k) != v and k != "train.resume"
    }  # resume says how, not what
