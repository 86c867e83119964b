"""From canonical records to training batches: tokenize, cache, pack, collate, and a resumable batch order.

- pretraining text is tokenized once, streaming, into a token file keyed by data + tokenizer hashes and read
  through a memory map (token_file.py), joined with EOS and cut into blocks of `max_length` (standard
  continued-pretraining packing), so a corpus larger than memory trains;
- chats are rendered with their loss mask, then optionally packed padding-free: whole examples are
  placed into rows of `max_length` tokens (first-fit decreasing), and each example's position ids
  restart at 0. transformers turns restarting position ids into a block-diagonal causal mask, so
  packed examples never attend to each other (tests compare logits against unpacked runs);
- batch order is a pure function of (seed, epoch, rank), so a resumed run replays the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from camelid.data.formats import load_source
from camelid.data.templates import IGNORE, Rendered, render, render_examples
from camelid.data.token_file import Blocks, token_blocks
from camelid.utils import CamelidError, log


@dataclass
class Prepared:
    """What a stage trains on, plus the provenance saved with the run."""

    train: Sequence  # units: Rendered examples, packed rows (list[Rendered]), or pt Blocks (1-D token arrays)
    eval: Sequence
    sources: list[dict] = field(default_factory=list)  # load_source stats: files, sha256, counts
    dropped: dict = field(default_factory=dict)  # reason → count, for examples removed after tokenizing
    kind: str = "sft"


def load_records(specs: list[str], kind: str, data_cfg) -> tuple[list[dict], list[dict]]:
    records, stats = [], []
    for spec in specs:
        recs, st = load_source(
            spec, kind, on_error=data_cfg.on_error, max_samples=data_cfg.max_samples or None, fmt=data_cfg.format
        )
        records += recs
        stats.append(st)
    return records, stats


def _split(units: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction <= 0:
        return units, []
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(units), generator=g).tolist()
    n_eval = max(1, int(len(units) * fraction))
    if isinstance(units, Blocks):  # the same split, without reading the blocks
        return units.subset(order[n_eval:]), units.subset(order[:n_eval])
    return [units[i] for i in order[n_eval:]], [units[i] for i in order[:n_eval]]


# ---------------------------------------------------------------------------------------------
# supervised chats


def with_system(messages: list[dict], system: str) -> list[dict]:
    """`messages` with the data.system prompt in front, unless empty or the chat brings its own."""
    if system and messages[0]["role"] != "system":
        return [{"role": "system", "content": system}] + messages
    return messages


def render_one(tokenizer, messages: list[dict], data_cfg) -> Rendered | str:
    """A chat as the model sees it writing its last answer, with its loss mask, cut to data.max_length, or the
    reason it cannot be trained on."""
    return _fit(render(tokenizer, with_system(messages, data_cfg.system)), data_cfg)


def _fit(r: Rendered, data_cfg, empty: str = "no assistant tokens within data.max_length") -> Rendered | str:
    if len(r.input_ids) > data_cfg.max_length:
        if data_cfg.truncation == "drop":
            return "longer than data.max_length"
        r = Rendered(r.input_ids[: data_cfg.max_length], r.labels[: data_cfg.max_length])
    if r.n_supervised == 0:
        # Never train on an example silently emptied by truncation: count it and say so.
        return empty
    return r


def _report_dropped(dropped: dict, total: int, what: str) -> None:
    for reason, n in dropped.items():
        log.warning(f"dropped {n} of {total} {what}: {reason}")


def render_all(tokenizer, records: list[dict], data_cfg) -> tuple[list[Rendered], dict]:
    """Every chat as its training examples: one per chat, or one per turn where the template rewrites history."""
    out, dropped, total = [], {}, 0
    for rec in records:
        for r in render_examples(tokenizer, with_system(rec["messages"], data_cfg.system)):
            total += 1
            r = _fit(r, data_cfg)
            if isinstance(r, str):
                dropped[r] = dropped.get(r, 0) + 1
            else:
                out.append(r)
    if total > len(records):
        log.info(
            f"{len(records)} chats gave {total} examples: the chat template renders past turns differently, "
            f"so each turn is trained after the prefix the model sees for it"
        )
    _report_dropped(dropped, total, "chat examples" if total > len(records) else "chats")
    if not out:
        raise CamelidError("no trainable chats left after rendering; raise data.max_length or check the data")
    return out, dropped


def pack(examples: list[Rendered], capacity: int) -> list[list[Rendered]]:
    """First-fit decreasing bin packing of whole examples into rows of at most `capacity` tokens."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return [[examples[i] for i in row] for row in rows]


def _train_and_eval(tokenizer, data_cfg, seed: int, kind: str, convert) -> tuple[list, list, list[dict], dict]:
    """Records of `kind` from data.train (and data.eval, else a data.eval_split hold-out) through `convert`."""
    records, stats = load_records(data_cfg.train, kind, data_cfg)
    units, dropped = convert(tokenizer, records, data_cfg)
    if data_cfg.eval:
        eval_records, eval_stats = load_records(data_cfg.eval, kind, data_cfg)
        stats += eval_stats
        eval_units, _ = convert(tokenizer, eval_records, data_cfg)
    else:
        units, eval_units = _split(units, data_cfg.eval_split, seed)
    return units, eval_units, stats, dropped


def prepare_sft(tokenizer, data_cfg, seed: int) -> Prepared:
    examples, eval_examples, stats, dropped = _train_and_eval(tokenizer, data_cfg, seed, "messages", render_all)
    train = pack(examples, data_cfg.max_length) if data_cfg.packing else examples
    if data_cfg.packing:
        n_tok = sum(len(e.input_ids) for e in examples)
        log.info(
            f"packed {len(examples)} chats into {len(train)} rows ({n_tok / (len(train) * data_cfg.max_length):.0%} full)"
        )
    return Prepared(train, eval_examples, stats, dropped, "sft")


# ---------------------------------------------------------------------------------------------
# preference pairs (rm, dpo)


@dataclass
class Pair:
    """A preference pair as two rendered chats (prompt + answer), supervised on the final answer only.
    `ref` holds the reference model's (chosen, rejected) log-probs when DPO precomputes them."""

    chosen: Rendered
    rejected: Rendered
    ref: tuple[float, float] | None = None


def last_turn_only(r: Rendered) -> Rendered:
    """Keep the loss on the final assistant turn: earlier assistant turns of a multi-turn prompt are context."""
    labels = list(r.labels)
    i = len(labels) - 1
    while i >= 0 and labels[i] == IGNORE:  # trailing template text after the answer
        i -= 1
    while i >= 0 and labels[i] != IGNORE:  # the answer and its end-of-turn token
        i -= 1
    labels[: i + 1] = [IGNORE] * (i + 1)
    return Rendered(r.input_ids, labels)


def render_pair_side(tokenizer, prompt: list[dict], answer: str, data_cfg) -> Rendered | str:
    """One side of a pair: the whole chat rendered, supervised on the final answer only, then cut to
    data.max_length; or the reason it cannot be trained on. The answer is picked out before the cut: cutting first
    left an earlier assistant turn of a long multi-turn prompt as the "answer", identical on both sides."""
    r = render(tokenizer, with_system(prompt + [{"role": "assistant", "content": answer}], data_cfg.system))
    return _fit(last_turn_only(r), data_cfg, empty="answer cut to nothing by data.max_length")


def render_pairs(tokenizer, records: list[dict], data_cfg) -> tuple[list[Pair], dict]:
    """Pairs whose sides can teach a preference; the others dropped and counted by reason (the counts go to the run's
    data.json): a side whose answer does not fit data.max_length, or two sides that are the same tokens (answers
    equal, or equal up to where data.max_length cuts them) and so score the same whatever the model learns."""
    pairs, dropped = [], {}
    for rec in records:
        sides = [render_pair_side(tokenizer, rec["prompt"], rec[k], data_cfg) for k in ("chosen", "rejected")]
        reason = next((s for s in sides if isinstance(s, str)), None)
        if reason is None and sides[0].input_ids == sides[1].input_ids:
            reason = "chosen and rejected identical within data.max_length"
        if reason:  # a pair with one side unusable teaches nothing: drop both
            dropped[reason] = dropped.get(reason, 0) + 1
        else:
            pairs.append(Pair(sides[0], sides[1]))
    _report_dropped(dropped, len(records), "preference pairs")
    if not pairs:
        raise CamelidError("no preference pairs left after rendering; raise data.max_length or check the data")
    return pairs, dropped


def prepare_preference(tokenizer, data_cfg, seed: int) -> Prepared:
    pairs, eval_pairs, stats, dropped = _train_and_eval(tokenizer, data_cfg, seed, "preference", render_pairs)
    return Prepared(pairs, eval_pairs, stats, dropped, "preference")


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows first, then rejected rows, right-padded into one batch: one forward scores both sides.
    With precomputed reference log-probs the batch also carries ref_logps [2B] in the same order."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if pairs[0].ref is not None:
        batch["ref_logps"] = torch.tensor([p.ref[0] for p in pairs] + [p.ref[1] for p in pairs])
    return batch


# ---------------------------------------------------------------------------------------------
# pretraining text


def prepare_pt(tokenizer, data_cfg, seed: int, cache_dir: Path) -> Prepared:
    """Blocks of data.max_length tokens from a token file read through a memory map (token_file.py)."""
    blocks, stats = token_blocks(tokenizer, data_cfg.train, data_cfg, cache_dir, data_cfg.max_length)
    if data_cfg.eval:
        eval_blocks, eval_stats = token_blocks(tokenizer, data_cfg.eval, data_cfg, cache_dir, data_cfg.max_length)
        stats += eval_stats
    else:
        blocks, eval_blocks = _split(blocks, data_cfg.eval_split, seed)
    log.info(f"{len(blocks)} training blocks of {data_cfg.max_length} tokens")
    return Prepared(blocks, eval_blocks, stats, {}, "pt")


# ---------------------------------------------------------------------------------------------
# batches


def collate(units: list, pad_id: int) -> dict[str, torch.Tensor]:
    """Units → a padded batch. Packed rows carry position ids that restart per example and no
    attention mask (padding sits at the row's end, where causal attention keeps it harmless)."""
    if isinstance(units[0], np.ndarray):  # pt blocks: every token is a target
        ids = torch.from_numpy(np.stack(units).astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone(), "num_tokens": torch.tensor(ids.numel())}
    packed = isinstance(units[0], list)
    rows = units if packed else [[u] for u in units]
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            n = len(e.input_ids)
            ids[r, at : at + n] = torch.tensor(e.input_ids)
            labels[r, at : at + n] = torch.tensor(e.labels)
            pos[r, at : at + n] = torch.arange(n)
            mask[r, at : at + n] = 1
            at += n
        if at < width:  # keep positions increasing through the padding so it joins no new sequence
            pos[r, at:] = torch.arange(pos[r, at - 1] + 1, pos[r, at - 1] + 1 + width - at)
    # num_tokens (real, non-pad tokens) is for throughput logs; the loop removes it before forward.
    batch = {"input_ids": ids, "labels": labels, "num_tokens": mask.sum()}
    if packed:
        return batch | {"position_ids": pos}
    return batch | {"attention_mask": mask}


def batch_order(n_units: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's micro-batches for one epoch: a seeded permutation, cut into global batches."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n_units, generator=g).tolist()
    step = batch_size * world
    batches = []
    for i in range(0, n_units, step):
        chunk = perm[i : i + step]
        if len(chunk) < step and world > 1:
            break  # uneven last batches would leave ranks waiting on each other
        batches.append(chunk[rank::world])
    return batches
