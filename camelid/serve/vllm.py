"""The exact `vllm serve` command for a camelid output folder, after checking vLLM can load it as it is.

Exported models (`camelid export`) and full/freeze runs are plain transformers folders (config, safetensors
weights, tokenizer, chat template): vLLM serves them directly. LoRA runs are peft adapter folders: vLLM serves them
on top of their base model with `--enable-lora`; the run's chat template is passed explicitly because vLLM would
otherwise use the base model's, and a run may have trained on another one (`model.template`).
What vLLM cannot load as is, and what to do instead, is an error here rather than a failure on the GPU box.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from camelid import hub
from camelid.utils import CamelidError

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values


def _folder(target: str | Path) -> Path:
    """The folder vLLM will load: a run's final/, an exported model, or a catalog model (resolved, and pulled if
    needed, as the other verbs do)."""
    path = Path(hub.model_folder(target))
    if not path.is_dir():  # a Hugging Face id that the Hub serves: nothing here to check
        raise CamelidError(
            f"{target}: not a local folder; camelid vllm checks a run folder, its final/ folder, an "
            "exported model or a catalog model. For a Hugging Face id run "
            f"`vllm serve {target}` directly"
        )
    return path


def vllm_command(target: str | Path, name: str | None = None, port: int = 8000) -> str:
    path = _folder(target)
    name = name or (Path(target).resolve().name)
    template = path / "chat_template.jinja"
    cfg = hub.adapter_config(path)
    if cfg is not None:
        kind = cfg.get("peft_type")
        if kind != "LORA":
            raise CamelidError(
                f"{path}: a {kind} adapter; vLLM serves only LoRA adapters (serve it with `camelid serve`)"
            )
        problems = []
        if cfg.get("use_dora"):
            problems.append("DoRA adapters are not supported by vLLM")
        if cfg.get("modules_to_save"):
            problems.append(
                f"the adapter also trains whole modules ({', '.join(cfg['modules_to_save'])}), which vLLM "
                "LoRA does not load"
            )
        if problems:
            raise CamelidError(
                f"{path}: " + "; ".join(problems) + f"; merge it first: camelid export {target} OUT_DIR, "
                "then serve OUT_DIR"
            )
        base = cfg.get("base_model_name_or_path") or "BASE_MODEL"
        rank = max([cfg.get("r", 8)] + list((cfg.get("rank_pattern") or {}).values()))
        max_rank = next((r for r in LORA_RANKS if r >= rank), None)
        if max_rank is None:
            raise CamelidError(f"{path}: LoRA rank {rank} is above vLLM's maximum {LORA_RANKS[-1]}; merge it first")
        args = [
            "vllm",
            "serve",
            base,
            "--enable-lora",
            "--lora-modules",
            f"{name}={path.resolve()}",
            "--max-lora-rank",
            str(max_rank),
        ]
    elif (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        if "quantization_config" in config and config["quantization_config"].get("quant_method") == "bitsandbytes":
            raise CamelidError(f"{path}: bitsandbytes-quantized weights; export a merged bf16 model for vLLM")
        args = ["vllm", "serve", str(path.resolve()), "--served-model-name", name]
    else:
        raise CamelidError(f"{path}: neither a model (config.json) nor an adapter (adapter_config.json)")
    if template.is_file():
        args += ["--chat-template", str(template.resolve())]
    return shlex.join(args + ["--host", "127.0.0.1", "--port", str(port)])
