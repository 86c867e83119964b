"""Direct preference optimisation: fit the policy to preference pairs, tied to a reference by β (no reward model).

Features: preference pairs as for `rm`; DPO's sigmoid loss (Rafailov et al. 2023), IPO (Azar et al. 2023), label
smoothing / cDPO; log-probs summed over the final answer only (earlier turns of a multi-turn prompt are context);
the reference is the policy with its adapter switched off for lora / qlora / ptuning (no second copy in memory) or a
frozen copy of the base for full / freeze / embedding; `dpo.precompute_ref=true` scores every pair with the reference
once before training and then frees it. Logs chosen / rejected implicit rewards, margins and accuracy, at every
step and every eval; resume.

    camelid dpo configs/dpo_lora.yaml dpo.beta=0.1
"""

from __future__ import annotations

import dataclasses
import gc
import time

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from camelid.config import Config, DpoConfig, validate
from camelid.data.loader import Pair, collate_pairs, prepare_preference
from camelid.model import Model, load_model, load_tokenizer
from camelid.train import run
from camelid.train.loop import fit
from camelid.train.losses import dpo_loss, sequence_logps

ADAPTERS = ("lora", "qlora", "ptuning")


class Reference:
    """The reference policy's sequence log-probs: the policy itself with adapters off, or a frozen copy."""

    def __init__(self, cfg: Config, policy: Model, acc: Accelerator):
        self.acc, self.policy, self.copy = acc, policy, None
        if cfg.method not in ADAPTERS:
            self.copy = load_model(dataclasses.replace(cfg, method="full")).requires_grad_(False).eval().to(acc.device)

    @torch.no_grad()
    def logps(self, batch: dict, model: torch.nn.Module | None = None) -> torch.Tensor:
        if self.copy is not None:
            return sequence_logps(self.copy, batch)
        peft_model = self.acc.unwrap_model(model if model is not None else self.policy)
        was_training = peft_model.training
        peft_model.eval()  # the reference has no dropout
        with peft_model.disable_adapter():
            out = sequence_logps(peft_model, batch)
        peft_model.train(was_training)
        return out


def precompute(ref: Reference, units: list[Pair], collate_fn, batch_size: int, device: torch.device) -> None:
    """Store each pair's reference (chosen, rejected) log-probs on it, so training needs no reference forward."""
    for i in tqdm(range(0, len(units), batch_size), desc="reference log-probs", unit="batch"):
        chunk = units[i : i + batch_size]
        batch = {k: v.to(device) for k, v in collate_fn(chunk).items() if k != "num_tokens"}
        chosen, rejected = ref.logps(batch).float().cpu().chunk(2)
        for p, c, r in zip(chunk, chosen.tolist(), rejected.tolist()):
            p.ref = (c, r)


def dpo_batch_loss(ref: Reference, dc: DpoConfig):
    """`batch → loss` over [chosen rows; rejected rows]: policy and reference sequence log-probs into `dpo_loss`."""

    def loss_fn(model, batch: dict):
        policy = sequence_logps(model, batch)
        reference = batch["ref_logps"] if "ref_logps" in batch else ref.logps(batch, model)
        (pc, pr), (rc, rr) = policy.chunk(2), reference.chunk(2)
        losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, dc.beta, dc.loss, dc.label_smoothing)
        return losses.mean(), {
            "reward_chosen": chosen.mean(),
            "reward_rejected": rejected.mean(),
            "margin": (chosen - rejected).mean(),
            "accuracy": (chosen > rejected).float().mean(),
            "logp_chosen": pc.detach().mean(),
            "logp_rejected": pr.detach().mean(),
            "n_pairs": len(pc),
        }

    return loss_fn


def main(cfg: Config, loss_fn=None) -> dict:
    validate(cfg, "dpo")
    started = time.time()
    run_dir, acc = run.start(cfg, "dpo")

    tokenizer = load_tokenizer(cfg.model.name, cfg.model.template, cfg.model.trust_remote_code)
    with acc.main_process_first():
        data = prepare_preference(tokenizer, cfg.data, cfg.train.seed)
    run.record_data(run_dir, data, acc)

    model = load_model(cfg)
    model.to(acc.device)
    ref = Reference(cfg, model, acc)

    def collate_fn(pairs):
        return collate_pairs(pairs, tokenizer.pad_token_id)

    if cfg.dpo.precompute_ref:
        precompute(ref, data.train + data.eval, collate_fn, cfg.train.batch_size, acc.device)
        if ref.copy is not None:  # no longer needed: free its memory before training
            ref.copy = None
            gc.collect()  # frees it now even if something still holds a reference cycle to it
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    model, metrics = fit(
        model, loss_fn or dpo_batch_loss(ref, cfg.dpo), data.train, data.eval, collate_fn, cfg.train, run_dir, acc
    )
    run.finish(run_dir, acc, model, tokenizer, cfg, metrics, started)
    return metrics
