"""PPO (RLHF): the policy writes answers to prompts, a reward model scores them, PPO moves the policy toward higher
scores while a per-token KL penalty keeps it near the reference (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022).

Each update ("step") of this loop, read top to bottom in `main`:
1. rollout: `ppo.rollout_batch` prompts are answered by the policy through the serving engine (paged KV cache,
   continuous batching; sampling with `ppo.temperature/top_p/top_k`, `ppo.max_new_tokens`, seeded per episode);
2. score: the reward model reads prompt + answer (its own tokenizer and chat template) → one score per answer,
   clipped to ±`ppo.reward_clip`, minus `ppo.missing_eos_penalty` for answers cut at the length limit;
3. the actor's and the reference's log-probs and the critic's values of every answer token; per-token rewards
   r_t = −β·KL_t plus the score on the last token; GAE advantages (whitened) and returns;
4. `ppo.ppo_epochs` passes over the batch in mini-batches: clipped policy loss (+ γ·LM loss on `ppo.ptx_data`,
   InstructGPT's PPO-ptx) on the actor, clipped value loss on the critic;
5. the KL coefficient β adapts toward `ppo.target_kl` when `ppo.adaptive_kl` (Ziegler et al. 2019, sec. 2.2).
Logged every step: score, KL, β, entropy, clip fractions, value loss, response length, share ended by EOS;
a progress bar over episodes; atomic checkpoints every `train.save_every` steps, and resume continues there with the
same prompts and seeds.

Memory layout (`ppo.layout`): `shared` (LoRA / QLoRA) keeps ONE base model: the actor is LoRA adapter "default", the
critic LoRA adapter "critic" plus a value head, the reference is the base with adapters off. `separate` loads the
actor, the critic and a frozen reference as three models (any of full / freeze / lora). The reward model is its own
model (any `camelid rm` run or sequence classifier). `final/` holds the actor, loadable like any sft run.

    camelid ppo configs/ppo_lora.yaml ppo.reward_model=runs/rm
    main(cfg, reward_fn=lambda prompts, answers: [...])   # any Python reward instead of a model
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from camelid.allocator import trim_heap
from camelid.config import Config, PpoConfig, validate
from camelid.data.loader import batch_order, collate, load_records, prepare_pt, with_system
from camelid.data.templates import prompt_ids, render
from camelid.engine import Engine, SamplingParams
from camelid.hub import camelid_home
from camelid.lora_dropout import use_hash_dropout
from camelid.model import decoder_and_head, load_model, load_reward_model, load_tokenizer
from camelid.train import run
from camelid.train.loop import MetricsLog, checkpoint_due, make_scheduler, param_groups, resume, save_checkpoint
from camelid.train.losses import (
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    lm_loss,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)
from camelid.train.output_head import chunked_logits, head_logps
from camelid.utils import CamelidError, log

RewardFn = Callable[[list[list[dict]], list[str]], list[float]]


class ActorCritic:
    """Actor, critic and reference behind one interface, in either memory layout (see the module docstring)."""

    def __init__(self, cfg: Config, device: torch.device):
        self.shared = cfg.ppo.layout == "shared"
        self.policy = load_model(cfg).to(device)
        if self.shared:
            # A second LoRA on the same base: the critic learns its own features without moving the actor's.
            self.policy.add_adapter("critic", copy.deepcopy(self.policy.peft_config["default"]))
            use_hash_dropout(self.policy)
            self.critic, self.reference = None, None
        else:
            self.critic = load_model(cfg).to(device)
            self.reference = load_model(dataclasses.replace(cfg, method="full")).requires_grad_(False).eval().to(device)
        hidden = self.policy.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, device=device)  # float32 whatever the model's dtype
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        # peft's set_adapter freezes inactive adapters; both must stay trainable, so their flags are restored.
        self.actor_params = [p for n, p in self.policy.named_parameters() if p.requires_grad and ".critic." not in n]
        if self.shared:
            critic = [p for n, p in self.policy.named_parameters() if ".critic." in n]
        else:
            critic = [p for p in self.critic.parameters() if p.requires_grad]
        self.critic_params = critic + list(self.value_head.parameters())
        self.use("default")

    def use(self, adapter: str) -> None:
        if self.shared:
            self.policy.set_adapter(adapter)
            for p in self.actor_params + self.critic_params:
                p.requires_grad_(True)

    def trainable(self) -> torch.nn.Module:
        """Everything a checkpoint must hold (parameters that require grad), as one module."""
        parts = {"policy": self.policy, "value_head": self.value_head}
        return torch.nn.ModuleDict(parts if self.shared else parts | {"critic": self.critic})

    def train(self, mode: bool = True) -> None:
        for m in (self.policy, self.critic, self.value_head):
            if m is not None:
                m.train(mode)

    def _hidden_and_head(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.nn.Module]:
        split = decoder_and_head(model)
        if split is None:
            raise CamelidError(
                f"ppo needs a model whose decoder and output head can be called apart; "
                f"{type(model).__name__} post-processes its logits"
            )
        decoder, head = split
        hidden = decoder(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        ).last_hidden_state
        p = batch["prompt_width"]  # the state before answer token j is the hidden state at column p + j - 1
        return hidden[:, p - 1 : -1], head

    def hidden(self, batch: dict, reference: bool = False) -> tuple[torch.Tensor, torch.nn.Module]:
        """The decoder's hidden state before each answer position [B, R, d], and the output head."""
        if reference and self.shared:
            with self.policy.disable_adapter():
                return self._hidden_and_head(self.policy, batch)
        self.use("default")
        return self._hidden_and_head(self.reference if reference else self.policy, batch)

    def logps(self, batch: dict, reference: bool = False) -> torch.Tensor:
        """log p of each answer token [B, R] under the sampling temperature; the logits are never held whole."""
        hidden, head = self.hidden(batch, reference)
        return head_logps(hidden, head, batch["answer_ids"], batch["temperature"])

    @torch.no_grad()
    def logps_and_entropy(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """For scoring a rollout: the actor's log p of each answer token and its entropy there [B, R], both from one
        pass of the decoder and of the head (a chunk of positions at a time)."""
        hidden, head = self.hidden(batch)
        targets = batch["answer_ids"].reshape(-1)
        logp, entropy = [], []
        for s, logits in chunked_logits(hidden, head, batch["temperature"]):
            logp.append(-F.cross_entropy(logits, targets[s : s + len(logits)], reduction="none"))
            entropy.append(entropy_from_logits(logits))
        shape = batch["answer_ids"].shape
        return torch.cat(logp).view(shape), torch.cat(entropy).view(shape)

    def values(self, batch: dict) -> torch.Tensor:
        self.use("critic")
        hidden, _ = self._hidden_and_head(self.policy if self.shared else self.critic, batch)
        out = self.value_head(hidden.float())[..., 0]
        self.use("default")
        return out


class RewardModel:
    """A `camelid rm` run (or any one-label sequence classifier) as a reward function."""

    def __init__(self, path: str, device: torch.device, dtype: str):
        self.model, self.tok = load_reward_model(path, dtype)
        self.model.to(device)
        self.device = device

    @torch.no_grad()
    def __call__(self, prompts: list[list[dict]], answers: list[str]) -> list[float]:
        rows = [render(self.tok, p + [{"role": "assistant", "content": a}]) for p, a in zip(prompts, answers)]
        batch = collate(rows, self.tok.pad_token_id)  # right-padded: the head reads each row's last non-pad token
        return (
            self.model(
                input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)
            )
            .logits[:, 0]
            .float()
            .tolist()
        )


def load_prompts(tokenizer: PreTrainedTokenizerBase, cfg: Config) -> list[tuple[list[dict], list[int]]]:
    """(messages, prompt token ids) per prompt; prompts leaving no room for an answer within data.max_length are
    dropped and counted."""
    records, _ = load_records(cfg.data.train, "prompt", cfg.data)
    room = cfg.data.max_length - cfg.ppo.max_new_tokens
    out, too_long = [], 0
    for rec in records:
        messages = with_system(rec["prompt"], cfg.data.system)
        ids = prompt_ids(tokenizer, messages)
        if len(ids) > room:
            too_long += 1
            continue
        out.append((messages, ids))
    if too_long:
        log.warning(
            f"dropped {too_long} of {len(records)} prompts longer than data.max_length − ppo.max_new_tokens ({room})"
        )
    if not out:
        raise CamelidError(f"no prompts fit in {room} tokens; raise data.max_length or lower ppo.max_new_tokens")
    return out


def episode_batch(prompts: list[list[int]], answers: list[list[int]], pad_id: int, temperature: float) -> dict:
    """Prompts left-padded to one width, answers right-padded after it: answer token j of every row sits in
    column prompt_width + j, so per-token tensors line up as [B, R]. Position ids skip the left padding."""
    pw, rw = max(map(len, prompts)), max(1, max(map(len, answers)))
    ids = torch.full((len(prompts), pw + rw), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, a) in enumerate(zip(prompts, answers)):
        ids[i, pw - len(p) : pw + len(a)] = torch.tensor(p + a)
        mask[i, pw - len(p) : pw + len(a)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": (mask.cumsum(1) - 1).clamp(min=0),
        "answer_ids": ids[:, pw:],
        "answer_mask": mask[:, pw:].float(),
        "prompt_width": pw,
        "temperature": temperature,
    }


def take(batch: dict, idx: torch.Tensor) -> dict:
    """The rows `idx` of every per-episode tensor in `batch`; scalars (prompt width, temperature) as they are."""
    return {k: v[idx.to(v.device)] if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def rollout(
    ac: ActorCritic,
    engine: Engine,
    reward_fn: RewardFn,
    prompts,
    cfg: Config,
    step: int,
    kl_coef: float,
    device: torch.device,
) -> tuple[dict, dict]:
    """Answer, score and evaluate one batch of prompts: everything the PPO epochs then train on."""
    p = cfg.ppo
    ac.train(False)
    ac.use("default")
    params = [
        SamplingParams(
            max_tokens=p.max_new_tokens,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            seed=cfg.train.seed * 1_000_003 + step * 10_007 + i,
        )
        for i in range(len(prompts))
    ]
    done = engine.generate([ids for _, ids in prompts], params)
    answers = [c.token_ids + ([c.stop_token] if c.stop_token is not None else []) for c in done]
    ended = torch.tensor([c.finish_reason == "stop" for c in done], dtype=torch.float32)
    scores = torch.tensor(reward_fn([m for m, _ in prompts], [c.text for c in done]), dtype=torch.float32)
    raw_scores = scores.clone()
    scores -= p.missing_eos_penalty * (1 - ended)
    if p.reward_clip:
        scores = scores.clamp(-p.reward_clip, p.reward_clip)

    batch = episode_batch([ids for _, ids in prompts], answers, engine.tokenizer.pad_token_id, p.temperature or 1.0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    mask = batch["answer_mask"]
    parts: dict[str, list] = {"old_logp": [], "ref_logp": [], "old_values": [], "entropy": []}
    for idx in torch.arange(len(prompts), device=device).split(p.mini_batch):
        mb = take(batch, idx)
        logp, entropy = ac.logps_and_entropy(mb)
        parts["old_logp"].append(logp)
        parts["entropy"].append(entropy)
        parts["ref_logp"].append(ac.logps(mb, reference=True))
        parts["old_values"].append(ac.values(mb))
    for key in ("old_logp", "ref_logp", "old_values"):
        batch[key] = torch.cat(parts[key]) * mask
    entropy = masked_mean(torch.cat(parts["entropy"]), mask)
    rewards, kl = kl_penalized_rewards(scores.to(device), batch["old_logp"], batch["ref_logp"], mask, kl_coef)
    if p.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, batch["returns"] = gae(rewards, batch["old_values"], mask, p.gamma, p.lam)
    batch["advantages"] = masked_whiten(advantages, mask)
    lengths = mask.sum(1)
    stats = {
        "score": raw_scores.mean().item(),
        "score_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
        "kl": kl.sum(1).mean().item(),
        "kl_coef": kl_coef,
        "non_score_reward": (-kl_coef * kl.sum(1)).mean().item(),
        "entropy": entropy.item(),
        "response_length": lengths.mean().item(),
        "ended_by_eos": ended.mean().item(),
        "returns": masked_mean(batch["returns"], mask).item(),
        "value": masked_mean(batch["old_values"], mask).item(),
    }
    return batch, stats


def ppo_update(
    ac: ActorCritic,
    batch: dict,
    cfg: Config,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ptx: Iterator[dict] | None,
    step: int,
) -> dict:
    """`ppo.ppo_epochs` passes over the rollout in mini-batches; one optimizer step per mini-batch."""
    p = cfg.ppo
    ac.train(True)
    g = torch.Generator().manual_seed(cfg.train.seed + step)
    sums: dict[str, float] = {}
    n = 0
    for _ in range(p.ppo_epochs):
        for idx in torch.randperm(len(batch["input_ids"]), generator=g).split(p.mini_batch):
            mb = take(batch, idx)
            mask = mb["answer_mask"]
            logp = ac.logps(mb)
            pg_loss, pg_stats = ppo_policy_loss(logp, mb["old_logp"], mb["advantages"], mask, p.clip_range)
            loss = pg_loss
            stats = {"pg_loss": pg_loss.item(), **{k: v.item() for k, v in pg_stats.items()}}
            if ptx is not None:  # InstructGPT's PPO-ptx: keep the pretraining distribution's likelihood up
                ptx_loss, _ = lm_loss(ac.policy, next(ptx))
                loss = loss + p.ptx_coef * ptx_loss
                stats["ptx_loss"] = ptx_loss.item()
            loss.backward()
            values = ac.values(mb)
            vf_loss, vf_stats = ppo_value_loss(values, mb["old_values"], mb["returns"], mask, p.value_clip)
            (p.vf_coef * vf_loss).backward()
            stats |= {"vf_loss": vf_loss.item(), **{k: v.item() for k, v in vf_stats.items()}}
            if cfg.train.max_grad_norm:
                stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(ac.actor_params, cfg.train.max_grad_norm))
                torch.nn.utils.clip_grad_norm_(ac.critic_params, cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            trim_heap()  # the pages this mini-batch freed go back to the OS, as after the rollout
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    return {k: v / n for k, v in sums.items()}


def adapt_kl(kl_coef: float, kl: float, cfg: PpoConfig) -> float:
    """Ziegler et al. 2019, sec. 2.2: β ← β·(1 + K_β·e), e = clip(KL/target − 1, ±0.2), K_β = episodes / horizon."""
    if not cfg.adaptive_kl:
        return kl_coef
    error = min(max(kl / cfg.target_kl - 1, -0.2), 0.2)
    return kl_coef * (1 + error * cfg.rollout_batch / cfg.kl_horizon)


def ptx_batches(tokenizer: PreTrainedTokenizerBase, cfg: Config, device: torch.device) -> Iterator[dict] | None:
    """An endless stream of pretraining-text batches for PPO-ptx, or None."""
    if not cfg.ppo.ptx_coef:
        return None
    data_cfg = dataclasses.replace(cfg.data, train=cfg.ppo.ptx_data, eval=[], eval_split=0.0)
    blocks = prepare_pt(tokenizer, data_cfg, cfg.train.seed, camelid_home() / "tokenized").train

    def stream():
        epoch = 0
        while True:
            for idx in batch_order(len(blocks), cfg.ppo.ptx_batch, cfg.train.seed, epoch):
                batch = collate([blocks[i] for i in idx], tokenizer.pad_token_id)
                yield {k: v.to(device) for k, v in batch.items() if k != "num_tokens"}
            epoch += 1

    return stream()


def main(cfg: Config, reward_fn: RewardFn | None = None) -> dict:
    validate(cfg, "ppo")
    if reward_fn is None and not cfg.ppo.reward_model:
        raise CamelidError("ppo.reward_model is required (a `camelid rm` run or a sequence-classification model)")
    started = time.time()
    run_dir, acc = run.start(cfg, "ppo")
    if acc.num_processes > 1:
        raise CamelidError("ppo runs in one process (one GPU or the CPU); launch it without accelerate/torchrun")
    p, t, device = cfg.ppo, cfg.train, acc.device

    tokenizer = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    prompts = load_prompts(tokenizer, cfg)
    ac = ActorCritic(cfg, device)
    reward_fn = reward_fn or RewardModel(
        p.reward_model, device, cfg.model.dtype if cfg.model.dtype != "auto" else "float32"
    )
    longest = max(len(ids) for _, ids in prompts) + p.max_new_tokens
    engine = Engine(
        ac.policy,
        tokenizer,
        dataclasses.replace(
            cfg.engine,
            prefix_cache=False,  # the weights change every update: yesterday's KV is stale
            max_running=p.rollout_batch,
            kv_cache_tokens=cfg.engine.kv_cache_tokens or p.rollout_batch * (longest + 16),
        ),
    )

    per_epoch = len(batch_order(len(prompts), p.rollout_batch, t.seed, 0))
    steps = t.max_steps or max(1, math.ceil(t.epochs * per_epoch))
    updates = p.ppo_epochs * (p.rollout_batch // p.mini_batch)  # optimizer steps per PPO step
    optimizer = torch.optim.AdamW(
        param_groups(ac.actor_params, t.weight_decay, t.lr)
        + param_groups(ac.critic_params, t.weight_decay, p.critic_lr or t.lr)
    )
    scheduler = make_scheduler(optimizer, t, steps * updates)
    ptx = ptx_batches(tokenizer, cfg, device)

    state = resume(run_dir, t, acc, ac.trainable(), optimizer, scheduler, updates) or {"step": 0, "kl_coef": p.kl_coef}
    for _ in range(state["step"] * updates if ptx is not None else 0):  # the ptx stream continues where it was
        next(ptx)
    ac.use("default")

    logger = MetricsLog(run_dir, t, acc, steps)
    bar = tqdm(
        total=steps * p.rollout_batch,
        initial=state["step"] * p.rollout_batch,
        desc="ppo",
        unit="episode",
        dynamic_ncols=True,
    )
    metrics: dict = {}
    t0, first = time.perf_counter(), state["step"]
    while state["step"] < steps:
        epoch, offset = divmod(state["step"], per_epoch)
        chosen = [prompts[i] for i in batch_order(len(prompts), p.rollout_batch, t.seed, epoch)[offset]]
        batch, roll = rollout(ac, engine, reward_fn, chosen, cfg, state["step"], state["kl_coef"], device)
        # on glibc (CAMELID_ALLOCATOR=system, or no tcmalloc) freed pages stay resident; handing them back between
        # phases is cheap (ms), inside one is not (a fault per page touched again): -0.08 GiB of peak RSS at 0.5B
        trim_heap()
        upd = ppo_update(ac, batch, cfg, optimizer, scheduler, ptx, state["step"])
        state["step"] += 1
        state["kl_coef"] = adapt_kl(state["kl_coef"], roll["kl"], p)
        elapsed = time.perf_counter() - t0
        metrics = {
            "step": state["step"],
            "epoch": epoch,
            **roll,
            **upd,
            "lr": scheduler.get_last_lr()[0],
            "episodes_per_s": (state["step"] - first) * p.rollout_batch / max(elapsed, 1e-9),
        }
        logger.step(metrics)
        bar.set_postfix(score=f"{roll['score']:.3f}", kl=f"{roll['kl']:.3f}")
        bar.update(p.rollout_batch)
        if checkpoint_due(t, state["step"], steps):
            save_checkpoint(run_dir, state, acc, ac.trainable(), optimizer, t.keep_last)
    bar.close()
    logger.close()
    if ac.shared:
        ac.policy.delete_adapter("critic")  # final/ is the actor alone, like an sft run
    run.finish(run_dir, acc, ac.policy, tokenizer, cfg, metrics, started)
    return metrics
