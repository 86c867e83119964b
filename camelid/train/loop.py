"""One training loop for every loss-driven stage (pt, sft, rm, dpo): `fit(model, loss_fn, data, ...)`.

Built on accelerate, so the same code runs on a laptop CPU and under `accelerate launch` / `torchrun`
with DDP, FSDP or DeepSpeed. What it does each optimizer step: `grad_accum` micro-batches →
clip → step → LR schedule (warmup + decay); every `log_every` steps a line in metrics.jsonl,
TensorBoard and the progress bar (loss, lr, tokens/s, ETA); every `eval_every` steps eval loss;
every `save_every` steps an atomic checkpoint. The last eval runs once, after the last step.

Checkpoints (`checkpoint-<step>/`, written to a temp folder and renamed, keep-last-k) hold the
trainable weights, optimizer moments, RNG states and the data position, in safetensors + JSON:
nothing is unpickled on resume. Under DeepSpeed/FSDP the weights are sharded, so accelerate's own
`save_state` writes them instead. Resume replays the same batch order from the saved position, so
a resumed run's losses equal an uninterrupted run's.

PPO owns its loop (rollouts, then updates) but takes the schedule, resume, metrics log and checkpoints from here.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from camelid.config import TrainConfig
from camelid.data.loader import batch_order
from camelid.utils import CamelidError, atomic_dir, fast_bf16, follow_umask, log, write_json, write_text_atomic

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
# Entries of a loss's metrics dict that weigh eval averages (tokens for LM losses, pairs for preference losses)
# rather than being metrics themselves.
WEIGHTS = ("n_tokens", "n_pairs")
_SHARDED = (DistributedType.DEEPSPEED, DistributedType.FSDP)
# train.scheduler → transformers' schedule name; every one starts with train.warmup_ratio of linear warmup.
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    handlers = []
    if (
        os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
        and "LOCAL_RANK" in os.environ
        and not torch.cuda.is_available()
    ):
        # DeepSpeed on CPU ranks: without a named backend accelerate sees no device, starts the process
        # group through DeepSpeed anyway, but then counts a single process. Naming gloo keeps both in step.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=mixed_precision(cfg), gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=handlers
    )


def mixed_precision(cfg: TrainConfig) -> str:
    """train.mixed_precision with auto resolved: bf16 autocast where bf16 is native (a GPU that has it, a CPU with
    AVX512-BF16 or AMX: SmolLM2 LoRA steps ran 1.5× faster than float32 on such a CPU), else none."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = "bf16" if fast_bf16(device) else "no"
    log.info(f"train.mixed_precision=auto: {chosen} on this {device}")
    return chosen


def param_groups(params, weight_decay: float, lr: float) -> list[dict]:
    """AdamW groups for the trainable `params`: weight decay on matrices only (decaying norms and biases only hurts,
    AdamW paper practice)."""
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]
    return [g for g in groups if g["params"]]


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model.parameters(), cfg.weight_decay, cfg.lr)
    if not groups:
        raise CamelidError("the model has no trainable parameters; check method and its options")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


class _Stream:
    """The micro-batch sequence across epochs, addressable by index so resume can jump into it."""

    def __init__(self, n_units: int, cfg: TrainConfig, rank: int, world: int):
        self.n_units, self.cfg, self.rank, self.world = n_units, cfg, rank, world
        self.per_epoch = len(batch_order(n_units, cfg.batch_size, cfg.seed, 0, rank, world))
        if self.per_epoch == 0:
            raise CamelidError(f"{n_units} training examples are fewer than one batch of {cfg.batch_size}×{world}")

    def from_index(self, start: int):
        epoch, offset = divmod(start, self.per_epoch)
        while True:
            order = batch_order(self.n_units, self.cfg.batch_size, self.cfg.seed, epoch, self.rank, self.world)
            for b in order[offset:]:
                yield epoch, b
            epoch, offset = epoch + 1, 0


def total_steps(n_units: int, cfg: TrainConfig, world: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = len(batch_order(n_units, cfg.batch_size, cfg.seed, 0, 0, world))
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def fit(
    model: torch.nn.Module,
    loss_fn: LossFn,
    train_units: list,
    eval_units: list,
    collate_fn: Callable[[list], dict],
    cfg: TrainConfig,
    run_dir: str | Path,
    accelerator: Accelerator | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Train `model` with `loss_fn(model, batch) → (loss, metrics)`.

    Returns (the prepared model — wrapped by DDP/DeepSpeed when distributed —, the last metrics)."""
    run_dir = Path(run_dir)
    acc = accelerator or make_accelerator(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    optimizer = _optimizer(model, cfg)
    steps = total_steps(len(train_units), cfg, acc.num_processes)
    if acc.distributed_type == DistributedType.DEEPSPEED:
        acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    model, optimizer = acc.prepare(model, optimizer)
    # The scheduler stays unprepared: accelerate would step it once per process per step.
    scheduler = make_scheduler(optimizer, cfg, steps)
    state = resume(run_dir, cfg, acc, model, optimizer, scheduler) or {"step": 0, "tokens": 0}

    stream = _Stream(len(train_units), cfg, acc.process_index, acc.num_processes).from_index(
        state["step"] * cfg.grad_accum
    )
    logger = MetricsLog(run_dir, cfg, acc, steps)
    metrics: dict = {}
    if eval_units and state["step"] == 0:  # the baseline every later eval is read against
        logger.write({"step": 0, **evaluate(model, loss_fn, eval_units, collate_fn, cfg.batch_size, acc)})
    # The bar starts after the baseline eval, and later evals and checkpoint saves are taken off its clock and off
    # tokens/s: the ETA is training steps only (a slow step-0 eval once made a 9.5 min run show 46 min).
    bar = tqdm(
        total=steps,
        initial=state["step"],
        desc="train",
        unit="step",
        disable=not acc.is_main_process,
        dynamic_ncols=True,
    )
    t0, tok0, paused = time.perf_counter(), state["tokens"], 0.0
    model.train()
    while state["step"] < steps:
        step_loss, step_metrics, n_tok, grad_norm = 0.0, {}, 0, None
        for _ in range(cfg.grad_accum):
            epoch, idx = next(stream)
            batch = collate_fn([train_units[i] for i in idx])
            n_tok += int(batch.pop("num_tokens"))
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            with acc.accumulate(model):
                with acc.autocast():
                    loss, extra = loss_fn(model, batch)
                acc.backward(loss)
                if acc.sync_gradients:
                    grad_norm = (
                        acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach().float() / cfg.grad_accum
            for k, v in extra.items():
                if k in WEIGHTS:
                    continue
                step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / cfg.grad_accum
        scheduler.step()
        state["step"] += 1
        state["tokens"] += n_tok * acc.num_processes
        loss_value = acc.reduce(step_loss.to(acc.device), "mean").item()
        if not math.isfinite(loss_value):
            raise CamelidError(f"loss became {loss_value} at step {state['step']}; lower train.lr or check the data")
        elapsed = time.perf_counter() - t0 - paused
        metrics = {
            "step": state["step"],
            "epoch": epoch,
            "loss": loss_value,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": state["tokens"],
            "tokens_per_s": (state["tokens"] - tok0) / max(elapsed, 1e-9),
            **step_metrics,
        }
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
        bar.update(1)
        pause_from = time.perf_counter()
        if cfg.eval_every and state["step"] % cfg.eval_every == 0 and eval_units and state["step"] < steps:
            metrics |= evaluate(model, loss_fn, eval_units, collate_fn, cfg.batch_size, acc)
            model.train()
        logger.step(metrics)
        if on_step is not None:  # e.g. per-step timing in benchmarks/
            on_step(state["step"], metrics)
        if checkpoint_due(cfg, state["step"], steps):
            save_checkpoint(run_dir, state, acc, model, optimizer, cfg.keep_last)
        paused += pause_clock(bar, time.perf_counter() - pause_from)
    bar.close()
    if eval_units:
        final = evaluate(model, loss_fn, eval_units, collate_fn, cfg.batch_size, acc)
        metrics |= final
        logger.write({"step": state["step"], **final})
    logger.close()
    return model, metrics


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """train.scheduler over `steps` optimizer steps, the first train.warmup_ratio of them warming up linearly."""
    return get_scheduler(
        SCHEDULES[cfg.scheduler], optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps), num_training_steps=steps
    )


def resume(
    run_dir: Path,
    cfg: TrainConfig,
    acc: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scheduler_steps: int = 1,
) -> dict | None:
    """With train.resume and a checkpoint in `run_dir`: restore `model`'s trainable weights, the optimizer and the
    RNG states from the latest one, fast-forward the schedule by `scheduler_steps` per step done, and drop the
    metrics lines of the steps about to be run again. Returns the checkpoint's state (step, ...), or None when the
    run starts at step 0."""
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt, acc, model, optimizer)
    with warnings.catch_warnings():  # fast-forwarding the schedule without optimizer steps is intended
        warnings.simplefilter("ignore")
        for _ in range(state["step"] * scheduler_steps):
            scheduler.step()
    if acc.is_main_process:  # the one writer of metrics.jsonl: two ranks rewriting it at once lost its first lines
        truncate_metrics(run_dir / "metrics.jsonl", state["step"])
    log.info(f"resumed from {ckpt} at step {state['step']}")
    return state


def checkpoint_due(cfg: TrainConfig, step: int, steps: int) -> bool:
    """Every train.save_every steps, except the last: final/ holds that one."""
    return bool(cfg.save_every) and step % cfg.save_every == 0 and step < steps


def pause_clock(bar, seconds: float) -> float:
    """Take `seconds` (spent on evals and saves, not steps) off the progress bar's clock, so its rate and ETA are
    those of training steps; returns `seconds`."""
    if not bar.disable:
        bar.start_t += seconds
        bar.last_print_t += seconds  # the next rate sample starts after the pause, not before it
    return seconds


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loss_fn: LossFn, units: list, collate_fn, batch_size: int, acc: Accelerator
) -> dict:
    """Weighted means over `units` (sharded over ranks) of the loss and every metric the loss reports, as
    eval_<name>; weights are the loss's n_tokens (then eval_ppl too) or n_pairs, else 1 per batch."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=acc.device)
    # Every rank must run the same number of forwards (ZeRO-3 gathers weights collectively), so the
    # eval set is cut to a multiple of the world size (or, if smaller, evaluated whole on every rank).
    usable = len(units) // acc.num_processes * acc.num_processes
    mine = units[acc.process_index : usable : acc.num_processes] if usable else units
    token_weighted = False
    for i in range(0, len(mine), batch_size):
        batch = collate_fn(mine[i : i + batch_size])
        batch.pop("num_tokens")
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        with acc.autocast():
            loss, extra = loss_fn(model, batch)
        token_weighted = "n_tokens" in extra
        n = next((extra[k] for k in WEIGHTS if k in extra), 1)
        for k, v in {"loss": loss, **{k: v for k, v in extra.items() if k not in WEIGHTS}}.items():
            sums[k] = (
                sums.get(k, torch.zeros((), device=acc.device)) + torch.as_tensor(v, device=acc.device).float() * n
            )
        count += n
    count = acc.reduce(count, "sum").clamp(min=1)
    out = {f"eval_{k}": (acc.reduce(v, "sum") / count).item() for k, v in sorted(sums.items())}
    if token_weighted:
        out["eval_ppl"] = math.exp(min(out["eval_loss"], 50))
    return out


# ---------------------------------------------------------------------------------------------
# logging


class MetricsLog:
    """A run's metrics.jsonl, and its TensorBoard folder when train.tensorboard, written by the main process only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, acc: Accelerator, steps: int):
        self.path, self.acc, self.every, self.steps = Path(run_dir) / "metrics.jsonl", acc, cfg.log_every, steps
        self.writer = _tensorboard_writer(Path(run_dir), cfg) if acc.is_main_process else None

    def step(self, metrics: dict) -> None:
        """The line of a finished step, when due: every train.log_every steps and at the last one."""
        if metrics["step"] % self.every == 0 or metrics["step"] == self.steps:
            self.write(metrics)

    def write(self, metrics: dict) -> None:
        """One line now (`metrics` holds its "step"), e.g. an eval's."""
        if not self.acc.is_main_process:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.writer.add_scalar(k, v, metrics["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_writer(run_dir: Path, cfg: TrainConfig):
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard not installed (pip install 'camelid[tensorboard]'); logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the resumed checkpoint: those steps are about to be run again."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


# ---------------------------------------------------------------------------------------------
# checkpoints


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "state.json").exists():  # only complete (renamed) checkpoints
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path,
    state: dict,
    acc: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    keep_last: int,
) -> None:
    final = run_dir / f"checkpoint-{state['step']}"
    acc.wait_for_everyone()
    if acc.distributed_type in _SHARDED:
        # Every rank writes its shard; accelerate picks the format. Rename happens on rank 0 after all wrote.
        tmp = run_dir / f"checkpoint-{state['step']}.tmp-shared"
        acc.save_state(str(tmp / "accelerate"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_json(tmp / "state.json", state)
            follow_umask(tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
    elif acc.is_main_process:
        with atomic_dir(final) as tmp:
            unwrapped = acc.unwrap_model(model)
            save_file(_trainable(unwrapped), str(tmp / "trainable.safetensors"))
            tensors, meta = _flatten_optimizer(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            write_json(tmp / "optimizer.json", meta)
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            save_file(rng, str(tmp / "rng.safetensors"))
            write_json(tmp / "state.json", state | {"python_random": _jsonable(random.getstate())})
    acc.wait_for_everyone()
    if acc.is_main_process:
        for old in sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, acc: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    state = json.loads((ckpt / "state.json").read_text())
    if (ckpt / "accelerate").exists():
        acc.load_state(str(ckpt / "accelerate"))
    else:
        unwrapped = acc.unwrap_model(model)
        saved = load_file(str(ckpt / "trainable.safetensors"))
        params = dict(unwrapped.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
        extra = [n for n in saved if n not in params]
        if missing or extra:
            raise CamelidError(
                f"{ckpt} was written for a different set of trainable weights (this model has "
                f"{missing[:3] or 'none'} that it lacks, it has {extra[:3] or 'none'} that this model "
                "lacks): was method or lora.target changed? Start over with train.resume=false"
            )
        wrong = [(n, tuple(t.shape), tuple(params[n].shape)) for n, t in saved.items() if t.shape != params[n].shape]
        if wrong:
            n, had, want = wrong[0]
            raise CamelidError(
                f"{ckpt / 'trainable.safetensors'}: tensor {n} has shape {list(had)} but this "
                f"model's is {list(want)} ({len(wrong)} tensors differ; was lora.r or the model "
                "changed?). Start over with train.resume=false"
            )
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
        meta = json.loads((ckpt / "optimizer.json").read_text())
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        inner.load_state_dict(_unflatten_optimizer(load_file(str(ckpt / "optimizer.safetensors")), meta))
        rng = load_file(str(ckpt / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        if "python_random" in state:
            random.setstate(_tuplify(state.pop("python_random")))
    state.setdefault("tokens", 0)
    return state


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state → flat tensors + JSON, so checkpoints need no pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _jsonable(x):
    return [_jsonable(i) for i in x] if isinstance(x, (tuple, list)) else x


def _tuplify(x):
    return tuple(_tuplify(i) for i in x) if isinstance(x, list) else x
