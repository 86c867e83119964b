"""SFT throughput: camelid (LoRA, padding-free packing) vs a plain transformers.Trainer + peft LoRA baseline
(dynamic padding to the longest example of each batch with DataCollatorForSeq2Seq, the LLaMA-Factory-style setup).

Both sides train on the *same* rendered examples (camelid's `render`: the tokenizer's chat template,
assistant-only labels), with the same LoRA (r=16, alpha=32, all-linear, dropout 0.05), max_length,
micro-batch size, lr, schedule, optimizer (torch AdamW), seed and thread count, each in its own
subprocess (so peak RSS is its own), one after the other in one run. Each side sees every example once:

- camelid packs the N examples into rows of max_length tokens and runs ceil(rows / batch) steps;
- the baseline runs ceil(N / batch) steps of `batch` padded examples (random order, no length grouping).

Measured per side: wall time of the training steps only (start of the first step to the end of the
last; model loading, tokenization and Trainer setup excluded), useful tokens/s (real, non-pad tokens:
the sum of the fed examples' lengths, counted the same for both), supervised tokens/s (labels != -100),
peak RSS of the subprocess, the training loss (mean of the first and of the last quarter of steps) and a
held-out loss after training computed by the same code for both (unpadded, one example at a time).

    python benchmarks/sft_throughput.py                          # CPU defaults (~18 min on 2 cores)
    python benchmarks/sft_throughput.py --examples 64 --eval-examples 8   # a quick smoke run

A GPU run needs no network and no model files: on a machine where the catalog is pulled, write the
inputs (tokenizer + rendered examples, a few MB) once, carry that folder, and build a random
Qwen2-0.5B-shaped model there (throughput does not depend on the weights' values):

    python benchmarks/sft_throughput.py --save-inputs runs/bench-inputs
    python benchmarks/sft_throughput.py --inputs runs/bench-inputs --random-model qwen2-0.5b \\
        --device cuda --dtype bfloat16 --examples 1536 --batch-size 8

The random Qwen2-0.5B keeps Qwen2's real vocabulary size (151,936), so the LM head costs what it really
costs; its token ids come from the SmolLM2 tokenizer (all < 49,152, so valid ids of the larger table).

Results go to stdout as a markdown table and into `--out` (default benchmarks/RESULTS.md), replacing
only this benchmark's subsection for the same device/dtype/model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import (
    LIVE_MEMORY_ENV,
    LIVE_MEMORY_HELP,
    RANDOM_MODELS,
    build_random_model,
    machine,
    run_worker,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere without installing camelid
    sys.path.insert(0, str(ROOT))

SECTION = "## SFT throughput: camelid (packing) vs HF Trainer + peft (padding)"
DATA = ["alpaca_zh_demo", "alpaca_en_demo"]
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target": "all-linear"}
IGNORE = -100


# camelid's side once more on glibc's malloc, where it would run on tcmalloc (camelid/allocator.py): what that buys
CAMELID_GLIBC = "camelid-glibc"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--examples", type=int, default=256, help="training examples (both sides see each once)")
    p.add_argument(
        "--eval-examples", type=int, default=32, help="held-out examples for the after-training loss; 0 = skip"
    )
    p.add_argument(
        "--batch-size", type=int, default=4, help="micro-batch: packed rows (camelid) / padded examples (baseline)"
    )
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--model", default="smollm2-135m-instruct", help="catalog name or model folder (also the tokenizer)")
    p.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        default=None,
        help="build a randomly initialised model of this shape instead of loading --model's weights",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: weights loaded in bf16 and bf16 autocast, on both sides",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads for both sides")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sides", default="camelid,baseline", help="which sides to run, comma-separated")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="results file; '' = do not write")
    p.add_argument("--inputs", default="", help="folder from --save-inputs (tokenizer + rendered examples)")
    p.add_argument("--save-inputs", default="", help="render the data, write tokenizer + examples here, and exit")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (run dirs, logs)")
    p.add_argument("--live-memory", action="store_true", help=LIVE_MEMORY_HELP)
    p.add_argument(
        "--lf-python",
        default=str(ROOT / "artifacts" / "venv-llamafactory" / "bin" / "python"),
        help="python of a venv with llamafactory installed, for the llamafactory sides (see benchmarks/README.md)",
    )
    p.add_argument("--worker", choices=["camelid", CAMELID_GLIBC, "baseline", *LF_MODES], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# inputs: the same rendered examples for both sides


def render_examples(model: str, max_length: int, seed: int, out_dir: Path) -> dict:
    """Render the catalog's alpaca zh+en demo chats with camelid, in a seeded random order; write the
    tokenizer to out_dir/tokenizer and the examples to out_dir/examples.json."""
    import random

    from camelid.config import DataConfig
    from camelid.data.loader import load_records, render_all
    from camelid.model import load_tokenizer

    tok = load_tokenizer(model)
    data_cfg = DataConfig(train=list(DATA), max_length=max_length)  # truncation=right, like camelid's default
    records, stats = load_records(data_cfg.train, "messages", data_cfg)
    random.Random(seed).shuffle(records)  # mix zh and en
    examples, dropped = render_all(tok, records, data_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir / "tokenizer"))
    info = {
        "data": DATA,
        "records": len(records),
        "dropped": dropped,
        "max_length": max_length,
        "seed": seed,
        "tokenizer_from": model,
        "pad_token_id": tok.pad_token_id,
        "sources": [
            {
                "files": [f.get("path") for f in s.get("files", [])],
                "sha256": [f.get("sha256") for f in s.get("files", [])],
            }
            for s in stats
        ],
        "examples": [[e.input_ids, e.labels] for e in examples],
    }
    (out_dir / "examples.json").write_text(json.dumps(info))
    return info


def load_inputs(folder: Path) -> dict:
    path = folder / "examples.json"
    if not path.is_file() or not (folder / "tokenizer").is_dir():
        sys.exit(f"{folder}: not an inputs folder (expected examples.json and tokenizer/); make one with --save-inputs")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# workers (each in its own subprocess)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _useful(examples) -> tuple[int, int]:
    return sum(len(i) for i, _ in examples), sum(sum(1 for x in lab if x != IGNORE) for _, lab in examples)


def _held_out_loss(model, eval_examples, device: str, dtype: str) -> float | None:
    """Supervised-token-weighted loss over held-out examples, one unpadded example at a time (identical for both sides)."""
    import torch

    if not eval_examples:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        for ids, labels in eval_examples:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            y = torch.tensor(labels[1:], device=device)
            keep = y != IGNORE
            if keep.any():
                total += float(torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum"))
                count += int(keep.sum())
    return total / max(count, 1)


def _finish(spec: dict, result: dict, losses: list[float]) -> None:
    q = max(1, len(losses) // 4)
    result["loss_first"] = sum(losses[:q]) / q
    result["loss_final"] = sum(losses[-q:]) / q
    result["losses"] = losses
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    if spec["device"] == "cuda":
        import torch

        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(spec["result"]).write_text(json.dumps(result))


def worker_camelid(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    from camelid import allocator
    from camelid.config import Config, LoraConfig
    from camelid.data.loader import collate, pack
    from camelid.data.templates import Rendered
    from camelid.model import load_model
    from camelid.train.loop import fit, make_accelerator
    from camelid.train.losses import lm_loss

    train = [Rendered(ids, labels) for ids, labels in spec["train"]]
    rows = pack(train, spec["max_length"])
    bs = spec["batch_size"]
    steps = math.ceil(len(rows) / bs)

    cfg = Config()
    cfg.model.name = spec["model_path"]
    cfg.model.dtype = spec["dtype"]
    cfg.method = "lora"
    cfg.lora = LoraConfig(r=LORA["r"], alpha=LORA["alpha"], dropout=LORA["dropout"], target=[LORA["target"]])
    cfg.data.max_length = spec["max_length"]
    t = cfg.train
    t.output_dir = spec["run_dir"]
    t.lr, t.batch_size, t.max_steps, t.seed = spec["lr"], bs, steps, spec["seed"]
    t.warmup_ratio, t.scheduler, t.weight_decay, t.max_grad_norm = 0.03, "cosine", 0.0, 1.0
    t.mixed_precision = "bf16" if spec["dtype"] == "bfloat16" else "no"
    t.tensorboard, t.save_every, t.eval_every, t.log_every, t.resume = False, 0, 0, 1, False

    model = load_model(cfg)
    acc = make_accelerator(t)
    # The untrained model's held-out loss, the reference both sides' after-training losses are read against.
    loss_before = _held_out_loss(model.to(acc.device), spec["eval"], acc.device.type, spec["dtype"])
    pad_id = spec["pad_token_id"]
    marks: dict = {}
    losses: list[float] = []

    def loss_fn(m, batch):
        if "start" not in marks:  # the first step's forward begins: the clock starts
            _sync(spec["device"])
            marks["start"] = time.perf_counter()
        return lm_loss(m, batch)

    def on_step(step, metrics):
        _sync(spec["device"])
        marks["end"] = time.perf_counter()
        losses.append(metrics["loss"])

    def collate_fn(units):
        return collate(units, pad_id)

    model, metrics = fit(model, loss_fn, rows, [], collate_fn, t, Path(spec["run_dir"]), acc, on_step=on_step)
    useful, supervised = _useful(spec["train"])
    result = {
        "side": spec["side"],
        "allocator": allocator.malloc_name(),
        "examples": len(train),
        "rows": len(rows),
        "steps": len(losses),
        "planned_steps": steps,
        "wall_s": marks["end"] - marks["start"],
        "useful_tokens": useful,
        "supervised_tokens": supervised,
        "camelid_tokens_counted": metrics.get("tokens"),  # the loop's own num_tokens count: must equal useful_tokens
        "processed_tokens": _camelid_processed(rows, t),
        "eval_loss": _held_out_loss(acc.unwrap_model(model), spec["eval"], acc.device.type, spec["dtype"]),
        "eval_loss_before": loss_before,
    }
    _finish(spec, result, losses)


def _camelid_processed(rows, t) -> int:
    """Tokens the model ran on, padding included: camelid's collate pads each batch to its longest row,
    and the loop's first epoch visits rows in `batch_order`."""
    from camelid.data.loader import batch_order

    return sum(
        len(idx) * max(sum(len(e.input_ids) for e in rows[i]) for i in idx)
        for idx in batch_order(len(rows), t.batch_size, t.seed, 0)
    )


def _clock(spec: dict, marks: dict):
    """The Trainer-based sides' timer: the first step's start and the last step's end go into `marks`, as camelid's
    side measures them; at the end of training, the model and the log history too."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if "start" not in marks:
                _sync(spec["device"])
                marks["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync(spec["device"])
            marks["end"] = time.perf_counter()

        def on_train_end(self, args, state, control, model=None, **kw):
            marks["model"], marks["history"] = model, list(state.log_history)

    return Clock()


def _trainer_settings(spec: dict, steps: int) -> dict:
    """What the Trainer-based sides (HF Trainer, LLaMA-Factory) are given: camelid's schedule and optimizer."""
    return dict(
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=int(0.03 * steps),
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=spec["seed"],
        data_seed=spec["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=spec["dtype"] == "bfloat16",
        use_cpu=spec["device"] == "cpu",
        dataloader_num_workers=0,
    )


def worker_baseline(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(spec["tokenizer_path"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    dtype = getattr(torch, spec["dtype"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_path"], dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False  # what LLaMA-Factory sets for training
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["target"],
            task_type="CAUSAL_LM",
        ),
    )

    rows = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels} for ids, labels in spec["train"]]
    try:
        from datasets import Dataset

        train_ds = Dataset.from_list(rows)
    except ImportError:  # the GPU image may lack `datasets`; Trainer takes any indexable dataset
        train_ds = rows
    bs = spec["batch_size"]
    steps = math.ceil(len(rows) / bs)

    fields = TrainingArguments.__dataclass_fields__
    extra = {}
    if "train_sampling_strategy" in fields:  # transformers >= 5.x: the old group_by_length flag
        extra["train_sampling_strategy"] = "random"
    elif "group_by_length" in fields:
        extra["group_by_length"] = False
    args = TrainingArguments(
        output_dir=spec["run_dir"],
        **_trainer_settings(spec, steps),
        logging_strategy="steps",
        eval_strategy="no",
        dataloader_drop_last=False,
        remove_unused_columns=False,
        **extra,
    )
    collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=IGNORE)
    marks: dict = {}
    processed = [0]

    def counting_collator(features):
        batch = collator(features)
        processed[0] += batch["input_ids"].numel()  # padded tokens the model runs on
        return batch

    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=counting_collator, callbacks=[_clock(spec, marks)]
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    useful, supervised = _useful(spec["train"])
    result = {
        "side": "baseline",
        "examples": len(rows),
        "steps": trainer.state.global_step,
        "planned_steps": steps,
        "wall_s": marks["end"] - marks["start"],
        "useful_tokens": useful,
        "supervised_tokens": supervised,
        "processed_tokens": processed[0],
        "eval_loss": _held_out_loss(model, spec["eval"], spec["device"], spec["dtype"]),
    }
    _finish(spec, result, losses)


LF_MODES = {"llamafactory": {}, "llamafactory-neat": {"neat_packing": True}}


def _lf_rows(spec: dict, mode: dict, cutoff: int, tokenizer) -> dict:
    """The training set as LLaMA-Factory's own preprocessing would leave it, built from our rendered examples:
    unchanged rows for its default mode; for neat_packing, rows packed by its own packer (its knapsack, position ids
    restarting per example, segment ids in attention_mask) fed our token ids instead of its template's encoding."""
    train = spec["train"]
    if not mode:
        return {
            "input_ids": [ids for ids, _ in train],
            "attention_mask": [[1] * len(ids) for ids, _ in train],
            "labels": [lab for _, lab in train],
        }
    from llamafactory.data.processor.supervised import PackedSupervisedDatasetProcessor
    from llamafactory.hparams import DataArguments

    class Pretokenized(PackedSupervisedDatasetProcessor):
        def _encode_data_example(self, prompt, response, *rest, **kw):
            ids, labels = train[int(prompt[0]["content"])]
            return list(ids), list(labels)

    proc = Pretokenized(
        template=None, tokenizer=tokenizer, processor=None, data_args=DataArguments(cutoff_len=cutoff, **mode)
    )
    n = len(train)
    rows = proc.preprocess_dataset(
        {
            "_prompt": [[{"role": "user", "content": str(i)}] for i in range(n)],
            "_response": [[{"role": "assistant", "content": ""}]] * n,
            "_system": [""] * n,
            "_tools": [""] * n,
            "_images": [None] * n,
            "_videos": [None] * n,
            "_audios": [None] * n,
        }
    )
    rows = {k: v for k, v in rows.items() if k not in ("images", "videos", "audios")}
    supervised = sum(sum(1 for x in lab if x != IGNORE) for lab in rows["labels"])
    if supervised != _useful(train)[1]:
        raise SystemExit("LLaMA-Factory's packer dropped examples: cutoff_len is too small for the longest one")
    return rows


def worker_llamafactory(spec: dict) -> None:
    """LLaMA-Factory's own SFT workflow (`run_exp`), in its own venv, on the same rendered examples (its
    `tokenized_path`: a saved dataset it trains on as is). Gradient checkpointing off (its default is on; no other
    side uses it), SDPA attention, torch AdamW: the same compute as the other sides."""
    import torch

    torch.set_num_threads(spec["threads"])
    import llamafactory
    import llamafactory.train.sft.workflow as workflow
    from datasets import Dataset, DatasetDict
    from llamafactory.train.tuner import run_exp
    from transformers import AutoTokenizer

    side, work = spec["side"], Path(spec["run_dir"])
    mode = LF_MODES[side]
    # its packer keeps examples of up to cutoff_len - 1 tokens and pads rows to cutoff_len; its collator pads to a
    # multiple of 8 but not the position ids, so packed rows are max_length + 8 long (camelid's: max_length)
    cutoff = spec["max_length"] + 8 if mode else spec["max_length"]
    model_dir = (
        work / "model"
    )  # the model's files with the rendered examples' tokenizer (LF loads both from one folder)
    model_dir.mkdir(parents=True)
    for folder in (Path(spec["model_path"]), Path(spec["tokenizer_path"])):  # the tokenizer's files win
        for f in (f for f in folder.iterdir() if f.is_file()):
            (model_dir / f.name).unlink(missing_ok=True)
            (model_dir / f.name).symlink_to(f.resolve())
    rows = _lf_rows(spec, mode, cutoff, AutoTokenizer.from_pretrained(str(model_dir)))
    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(work / "data"))
    bs = spec["batch_size"]
    steps = math.ceil(len(rows["input_ids"]) / bs)

    processed: list[int] = []

    class Counting(workflow.SFTDataCollatorWith4DAttentionMask):
        def __call__(self, features):
            batch = super().__call__(features)
            processed.append(batch["input_ids"].numel())
            return batch

    workflow.SFTDataCollatorWith4DAttentionMask = Counting
    marks: dict = {}
    run_exp(
        args=dict(
            model_name_or_path=str(model_dir),
            flash_attn="sdpa",
            disable_gradient_checkpointing=True,
            stage="sft",
            do_train=True,
            finetuning_type="lora",
            lora_rank=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            lora_target="all",
            dataset="camelid_rendered",  # required by its parser, unused with tokenized_path
            tokenized_path=str(work / "data"),
            cutoff_len=cutoff,
            **mode,
            output_dir=str(work / "out"),
            **_trainer_settings(spec, steps),
            fp16=False,
        ),
        callbacks=[_clock(spec, marks)],
    )
    losses = [h["loss"] for h in marks["history"] if "loss" in h and "train_runtime" not in h]
    useful, supervised = _useful(spec["train"])
    result = {
        "side": side,
        "version": llamafactory.__version__,
        "examples": len(spec["train"]),
        "steps": len(losses),
        "planned_steps": steps,
        "wall_s": marks["end"] - marks["start"],
        "useful_tokens": useful,
        "supervised_tokens": supervised,
        # the dataloader collates one batch ahead: count the batches the steps ran on
        "processed_tokens": sum(processed[:steps]),
        "eval_loss": _held_out_loss(marks["model"], spec["eval"], spec["device"], spec["dtype"]),
    }
    if mode:
        result["rows"] = len(rows["input_ids"])
    _finish(spec, result, losses)


# ---------------------------------------------------------------------------------------------
# the parent: prepare, run both sides, report


def run_side(side: str, spec: dict, work: Path, lf_python: str) -> dict:
    spec = dict(spec, side=side, run_dir=str(work / f"run-{side}"), result=str(work / f"result-{side}.json"))
    spec_path = work / f"spec-{side}.json"
    spec_path.write_text(json.dumps(spec))
    python = lf_python if side in LF_MODES else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--spec", str(spec_path)]
    return run_worker(cmd, spec, side, cpu_only=spec["device"] == "cpu")


def table(results: list[dict], device: str) -> str:
    gpu = device == "cuda"
    head = (
        [
            "side",
            "examples",
            "steps",
            "wall s",
            "useful tok/s",
            "supervised tok/s",
            "padding+fill overhead",
            "peak RSS MB",
        ]
        + (["peak GPU MB"] if gpu else [])
        + ["train loss first→final q.", "held-out loss after"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = {
            "camelid": f"camelid (packing; {r.get('allocator', 'glibc')})",
            CAMELID_GLIBC: "camelid (packing) on glibc malloc (`CAMELID_ALLOCATOR=system`)",
            "baseline": "HF Trainer + peft (padding)",
            "llamafactory": f"LLaMA-Factory {r.get('version', '')} (defaults: padding)",
            "llamafactory-neat": f"LLaMA-Factory {r.get('version', '')} (neat_packing)",
        }[r["side"]]
        steps = f"{r['steps']}" + (f" ({r['rows']} rows)" if "rows" in r else "")
        overhead = r["processed_tokens"] / r["useful_tokens"] - 1
        cells = [
            name,
            str(r["examples"]),
            steps,
            f"{r['wall_s']:.1f}",
            f"{r['useful_tokens'] / r['wall_s']:.0f}",
            f"{r['supervised_tokens'] / r['wall_s']:.0f}",
            f"{overhead:+.0%}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        if gpu:
            cells.append(f"{r.get('peak_gpu_mb', 0):.0f}")
        ev = r.get("eval_loss")
        cells += [f"{r['loss_first']:.3f} → {r['loss_final']:.3f}", f"{ev:.3f}" if ev is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


INTRO = """\
`benchmarks/sft_throughput.py`: the same rendered examples (camelid's `render`, the tokenizer's chat template,
assistant-only labels; alpaca_zh_demo + alpaca_en_demo in a seeded random order, truncated right at max_length),
LoRA r=16/alpha=32/all-linear/dropout 0.05, same max_length, micro-batch, lr, cosine schedule, torch AdamW, seed and
threads; each side in its own subprocess, one after the other. camelid packs the examples padding-free into rows of
max_length and runs ceil(rows/batch) steps; the baseline (`transformers.Trainer`, `DataCollatorForSeq2Seq` dynamic
padding, random order, no length grouping) runs ceil(examples/batch) steps, so both see every example once.
Wall time is the training steps only (first step's start to last step's end). Useful tokens = sum of the fed
examples' lengths (no padding), the same number for both sides; "padding+fill overhead" = tokens the model ran on
(padding, and the unfilled tails of packed rows) over useful tokens, minus 1. Peak RSS is each subprocess's
`ru_maxrss` (model loading included). Train loss: mean step loss over the first and last quarter of steps
(camelid's steps average over more tokens, so compare trends, not values); held-out loss: the same unpadded
evaluation code on the same held-out examples after training.
"""


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        if args.worker == "camelid":
            from camelid.allocator import use_fast_allocator

            use_fast_allocator()  # as the `camelid` command starts: again on tcmalloc where installed
        workers = {"camelid": worker_camelid, CAMELID_GLIBC: worker_camelid, "baseline": worker_baseline}
        workers.get(args.worker, worker_llamafactory)(spec)
        return

    import logging

    from camelid.utils import setup_logging

    setup_logging(logging.WARNING)
    if args.save_inputs:
        info = render_examples(args.model, args.max_length, args.seed, Path(args.save_inputs))
        print(f"wrote {len(info['examples'])} rendered examples and the tokenizer to {args.save_inputs}")
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("--device cuda, but torch sees no CUDA device")
    if args.dtype == "bfloat16" and args.device == "cpu":
        from camelid.utils import native_bf16_cpu

        if not native_bf16_cpu():
            print("note: this CPU has no native bf16 (AVX512-BF16/AMX): bf16 is emulated here and slower", flush=True)

    if args.live_memory:
        os.environ.update(LIVE_MEMORY_ENV)
    work = Path(tempfile.mkdtemp(prefix="camelid-bench-sft-"))
    try:
        t0 = time.perf_counter()
        if args.inputs:
            info = load_inputs(Path(args.inputs))
            tok_path = str(Path(args.inputs) / "tokenizer")
            if info["max_length"] != args.max_length:
                sys.exit(
                    f"{args.inputs} was rendered with max_length={info['max_length']}; pass --max-length {info['max_length']}"
                )
        else:
            info = render_examples(args.model, args.max_length, args.seed, work / "inputs")
            tok_path = str(work / "inputs" / "tokenizer")
        examples = info["examples"]
        need = args.examples + args.eval_examples
        if len(examples) < need:
            sys.exit(f"only {len(examples)} rendered examples; --examples + --eval-examples needs {need}")
        print(f"rendered {len(examples)} examples in {time.perf_counter() - t0:.1f} s", flush=True)

        if args.random_model:
            model_path = str(work / "model")
            model_name = f"random {args.random_model} (vocab {RANDOM_MODELS[args.random_model]['vocab_size']})"
            build_random_model(args.random_model, args.dtype, work / "model", args.seed)
        else:
            from camelid import hub

            model_path, model_name = hub.resolve_model(args.model), args.model
        spec = {
            "train": examples[: args.examples],
            "eval": examples[args.examples : need],
            "model_path": model_path,
            "tokenizer_path": tok_path,
            "pad_token_id": info["pad_token_id"],
            "max_length": args.max_length,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
            "dtype": args.dtype,
            "threads": args.threads,
        }
        sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        if any(side in LF_MODES for side in sides) and not Path(args.lf_python).is_file():
            sys.exit(f"--lf-python {args.lf_python}: not found; the llamafactory sides need a venv with llamafactory")
        results = [run_side(side, spec, work, args.lf_python) for side in sides]
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    device_name = machine()
    md = table(results, args.device)
    by = {r["side"]: r for r in results}
    lines = [md, ""]
    if "camelid" in by and "baseline" in by:
        c, b = by["camelid"], by["baseline"]
        ratio = (c["useful_tokens"] / c["wall_s"]) / (b["useful_tokens"] / b["wall_s"])
        lines.append(
            f"**camelid / baseline useful tokens/s: {ratio:.2f}×** (wall time {b['wall_s'] / c['wall_s']:.2f}× "
            f"shorter; the baseline ran on {b['processed_tokens'] / c['processed_tokens']:.2f}× the tokens camelid ran on)"
        )
        lines.append(
            f"\nWhere the difference comes from: packing removes the padding (the baseline ran on "
            f"{b['processed_tokens']:,} tokens for {b['useful_tokens']:,} useful ones, camelid on {c['processed_tokens']:,}), "
            f"and fuller rows mean fewer steps ({c['steps']} vs {b['steps']}), so per-step fixed costs (optimizer, "
            f"clipping, logging, kernel launches) are paid less often; but longer rows make attention costlier per token. "
            f"Per token the model actually ran on: camelid {c['processed_tokens'] / c['wall_s']:.0f} tok/s, "
            f"baseline {b['processed_tokens'] / b['wall_s']:.0f} tok/s."
        )
        if c.get("camelid_tokens_counted") not in (None, c["useful_tokens"]):
            lines.append(
                f"\nwarning: camelid's loop counted {c['camelid_tokens_counted']} tokens, the script {c['useful_tokens']}"
            )
    if "camelid" in by and CAMELID_GLIBC in by:
        c, g = by["camelid"], by[CAMELID_GLIBC]
        lines.append(
            f"\n**camelid on {c['allocator']} / on glibc malloc, useful tokens/s: "
            f"{g['wall_s'] / c['wall_s']:.2f}×; peak RSS {c['peak_rss_mb'] / g['peak_rss_mb']:.2f}×**"
        )
    for side in (s for s in LF_MODES if s in by and "camelid" in by):
        c, f = by["camelid"], by[side]
        lines.append(
            f"\n**camelid / {side} useful tokens/s: {(c['useful_tokens'] / c['wall_s']) / (f['useful_tokens'] / f['wall_s']):.2f}×**"
            f"; peak RSS camelid / {side}: {c['peak_rss_mb'] / f['peak_rss_mb']:.2f}×; held-out loss after "
            f"{c['eval_loss']:.3f} vs {f['eval_loss']:.3f}"
        )
    if by.get("camelid", {}).get("eval_loss_before") is not None:
        lines.append(
            f"\nHeld-out loss of the untrained model: {by['camelid']['eval_loss_before']:.3f} (same examples and code)."
        )
    busy = [f"{r['side']} {r['others_cores']:.2f}" for r in results if "others_cores" in r]
    if busy:
        lines.append(
            f"\nOther processes' CPU use while each side ran (cores, of {os.cpu_count()}): {', '.join(busy)}"
            + (
                " — **the machine was shared; timings are unreliable**"
                if any(r.get("others_cores", 0) > 0.25 for r in results)
                else " (machine otherwise idle)"
            )
        )
    report = "\n".join(lines)
    print("\n" + report + "\n")

    if args.out:
        cmd = "python " + " ".join(
            shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])
        )
        key = (
            f"{args.device}, {args.dtype}, {model_name}"
            + (", vs LLaMA-Factory" if any(side in LF_MODES for side in by) else "")
            + (", live memory" if args.live_memory else "")
        )
        body = (
            f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}\n"
            f"- machine: {device_name}; torch threads: {args.threads}\n"
            f"- command: `{cmd}`\n"
            f"- settings: {args.examples} examples (+{args.eval_examples} held out), micro-batch {args.batch_size}, "
            f"max_length {args.max_length}, lr {args.lr}, {args.dtype} on {args.device}"
            + (
                "; every worker with glibc's mmap threshold fixed at 1 MB (times not comparable)"
                if args.live_memory
                else ""
            )
            + "\n\n"
            f"{report}\n"
        )
        write_results(Path(args.out), SECTION, INTRO, key, body)
        print(f"wrote {args.out} (section '{SECTION[3:]}', subsection '{key}')")


if __name__ == "__main__":
    main()
