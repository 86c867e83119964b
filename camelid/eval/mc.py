"""Multiple-choice scoring by log-likelihood: log p(continuation | context) for every choice of every item.

Tokenization follows lm-evaluation-harness, so per-item choices can be compared with it: trailing whitespace of
the context moves to the continuation; the continuation's tokens are those of tokenize(context + continuation)
after the context's; no special tokens are added; an empty context is the end-of-text token; a row longer than
the model's context keeps its last `max_length` tokens.

Shared contexts are encoded once: a question's context and all its continuations go into one row, each
continuation attending to the context and to itself only (a tree mask, positions restarting after the context),
so a 4-way question costs one context, not four. Models whose forward cannot take that mask (P-Tuning prefixes)
score one (context, continuation) per row instead.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm import tqdm

from camelid.eval.items import MCItem
from camelid.model import decoder_and_head
from camelid.utils import fast_bf16


@dataclass
class Group:
    """One context and the continuations scored after it (a question, or one choice of a partial-scoring item)."""

    item: int  # index of the MCItem
    choices: list[int]  # which of the item's choices these continuations are
    context: list[int]
    continuations: list[list[int]]

    @property
    def length(self) -> int:
        return len(self.context) + sum(map(len, self.continuations))


@dataclass
class ItemScore:
    id: str
    subject: str
    gold: int
    loglik: list[float]
    n_tokens: list[int]  # of each continuation
    n_chars: list[int]  # of each choice as lm-eval's acc_norm counts them (MCItem.norm_lengths: no leading space)
    rechecked: bool = False  # scored again in float32 after a bf16 pass left its best choices too close

    def _scores(self, norm: str) -> list[float]:
        div = {"": [1] * len(self.loglik), "char": self.n_chars, "token": self.n_tokens}[norm]
        return [ll / max(d, 1) for ll, d in zip(self.loglik, div)]

    def pred(self, norm: str = "") -> int:
        """argmax of log-likelihood: raw, per character of the choice ("char": lm-eval's acc_norm) or per token of
        the continuation ("token")."""
        scores = self._scores(norm)
        return max(range(len(scores)), key=scores.__getitem__)

    def margin(self) -> float:
        """How close the closest call is, in units of bf16's error on a one-token gap (`eval.bf16_margin`): the least,
        over the three scorings and every choice j, of (best's score − j's score) / allowance(best, j); inf with one
        choice. A choice of n tokens may carry √n/2 of that unit of error in its log-likelihood (its tokens' errors add
        up like independent ones: benchmarks/RESULTS.md, the HellaSwag-format run), divided by what the scoring
        divides by; allowance(a, b) is the sum of the two. One-token choices: allowance 1, margin = the raw gap."""
        best = float("inf")
        for norm, div in (("", [1] * len(self.loglik)), ("char", self.n_chars), ("token", self.n_tokens)):
            scores = self._scores(norm)
            top = max(range(len(scores)), key=scores.__getitem__)

            def error(k: int) -> float:
                return max(self.n_tokens[k], 1) ** 0.5 / 2 / max(div[k], 1)

            for j in range(len(scores)):
                if j != top:
                    best = min(best, (scores[top] - scores[j]) / (error(top) + error(j)))
        return best


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    if not context:
        eot = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        return [eot], whole
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx) :]


def groups_of(tok, items: list[MCItem]) -> list[Group]:
    out = []
    for i, item in enumerate(items):
        pairs = [encode_pair(tok, c, t) for c, t in zip(item.contexts, item.continuations)]
        contexts = {tuple(c) for c, _ in pairs}
        if len(contexts) == 1:  # tokenization may still split a shared text differently; then score apart
            out.append(Group(i, list(range(len(pairs))), pairs[0][0], [t for _, t in pairs]))
        else:
            out.extend(Group(i, [j], c, [t]) for j, (c, t) in enumerate(pairs))
    return out


def _tree_row(g: Group, max_length: int) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """ids, positions, segment ids (0 context, j+1 continuation j), and per continuation the row index whose
    logits predict each of its tokens."""
    longest = max(map(len, g.continuations))
    ctx = g.context[-(max_length - longest) :] if len(g.context) + longest > max_length else g.context
    ids, pos, seg, preds = list(ctx), list(range(len(ctx))), [0] * len(ctx), []
    if longest == 1:  # one-token choices (A/B/C/D) are all read off the context's last position
        return ids, pos, seg, [[len(ctx) - 1]] * len(g.continuations)
    for j, cont in enumerate(g.continuations):
        start = len(ids)
        ids += cont
        pos += range(len(ctx), len(ctx) + len(cont))
        seg += [j + 1] * len(cont)
        preds.append([len(ctx) - 1] + list(range(start, start + len(cont) - 1)))
    return ids, pos, seg, preds


def _tree_mask(segs: list[list[int]], width: int) -> torch.Tensor:
    """[B, 1, W, W] bool: causal, and a continuation sees the context and itself; padding (-1) sees itself."""
    seg = torch.full((len(segs), width), -1, dtype=torch.long)
    for r, s in enumerate(segs):
        seg[r, : len(s)] = torch.tensor(s)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = causal & ((k == 0) & (q >= 0) | (k == q) & (q > 0))
    allowed |= torch.eye(width, dtype=torch.bool)  # every row sees at least itself (no NaN for padding)
    return allowed[:, None]


@torch.inference_mode()
def _score_batch_tree(model, groups: list[Group], max_length: int, device) -> list[list[float]]:
    rows = [_tree_row(g, max_length) for g in groups]
    width = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    pos = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (i, p, _, _) in enumerate(rows):
        ids[r, : len(i)], pos[r, : len(p)] = torch.tensor(i), torch.tensor(p)
    decoder, head = decoder_and_head(model)
    if all(max(r[2]) == 0 for r in rows):
        # contexts only, right-padded: causal attention never looks right, so no mask is needed and SDPA can
        # take its fused causal kernel (114 MMLU items: 22 s instead of 26 s with the tree mask)
        hidden = decoder(input_ids=ids.to(device), use_cache=False).last_hidden_state
    else:
        mask = _tree_mask([r[2] for r in rows], width)
        hidden = decoder(
            input_ids=ids.to(device), position_ids=pos.to(device), attention_mask=mask.to(device), use_cache=False
        ).last_hidden_state
    # the head only where a continuation token is predicted: most of the row is context
    where = [(r, p) for r, row in enumerate(rows) for preds in row[3] for p in preds]
    targets = torch.tensor([t for g in groups for cont in g.continuations for t in cont], device=device)
    logits = head(hidden[torch.tensor([r for r, _ in where]), torch.tensor([p for _, p in where])]).float()
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(1, targets[:, None])[:, 0]
    out, k = [], 0
    for r, row in enumerate(rows):
        res = []
        for preds in row[3]:
            n = len(preds)
            res.append(float(chosen[k : k + n].sum()))
            k += n
        out.append(res)
    return out


@torch.inference_mode()
def _score_batch_rows(model, groups: list[Group], max_length: int, device, pad_id: int) -> list[list[float]]:
    """One (context, continuation) per row, right-padded: for models whose forward takes only a padding mask."""
    pairs = [(r, j) for r, g in enumerate(groups) for j in range(len(g.continuations))]
    seqs = []
    for r, j in pairs:
        full = (groups[r].context + groups[r].continuations[j])[-(max_length + 1) :]
        seqs.append(full[:-1])  # the last token is only predicted
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros(len(seqs), width, dtype=torch.long)
    for k, s in enumerate(seqs):
        ids[k, : len(s)], att[k, : len(s)] = torch.tensor(s), 1
    logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits.float()
    out = [[None] * len(g.continuations) for g in groups]
    for k, (r, j) in enumerate(pairs):
        cont = groups[r].continuations[j]
        n = len(seqs[k])
        lg = logits[k, n - len(cont) : n]
        target = torch.tensor(cont, device=lg.device)
        logp = torch.log_softmax(lg, -1).gather(1, target[:, None])[:, 0]
        out[r][j] = float(logp.sum())
    return out


def score_items(
    model,
    tok,
    items: list[MCItem],
    batch_tokens: int = 4096,
    max_length: int | None = None,
    progress: bool = True,
    desc: str = "scoring",
    bf16_margin: float = 0.0,
) -> list[ItemScore]:
    """Log-likelihood of every choice of every item; batched by token budget, longest first.

    `bf16_margin` > 0, for a float32 model where bf16 is fast (CUDA, or a CPU with native bf16): score everything
    with a bf16 copy of the model (half the float32 weights' memory more, while scoring), then score again in
    float32 every item whose best choice leads another by less than `bf16_margin` nats, scaled up for longer choices
    and down for length-normalized scores (`ItemScore.margin`). Only a near-tie can flip between the two precisions,
    so predictions equal float32's as long as bf16's error on the gap between two choices stays under the margin so
    scaled (benchmarks/RESULTS.md measures that error). A bf16 copy, not autocast: autocast
    casts the weights again in every forward and measured ~1.9x faster than float32 here, the copy ~2.4-3x.
    """
    device = next(model.parameters()).device
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    groups = groups_of(tok, items)
    fast = bf16_margin > 0 and next(model.parameters()).dtype == torch.float32 and fast_bf16(device.type)
    first = copy.deepcopy(model).to(torch.bfloat16) if fast else model
    results = _score_groups(first, tok, groups, batch_tokens, max_length, device, progress, desc)
    del first
    scores = _item_scores(items, groups, results)
    if fast:
        close = {i for i, s in enumerate(scores) if s.margin() < bf16_margin}
        again = [gi for gi, g in enumerate(groups) if g.item in close]
        redo = _score_groups(
            model, tok, [groups[gi] for gi in again], batch_tokens, max_length, device, progress, f"{desc} (float32)"
        )
        results.update({gi: redo[k] for k, gi in enumerate(again)})
        scores = _item_scores(items, groups, results)
        for i in close:
            scores[i].rechecked = True
    return scores


def _score_groups(
    model, tok, groups: list[Group], batch_tokens: int, max_length: int, device, progress: bool, desc: str
) -> dict[int, list[float]]:
    """Group index → log-likelihood of each of its continuations."""
    tree = decoder_and_head(model) is not None
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def shape(g: Group) -> tuple[int, int]:  # (rows, width) the group takes in a batch
        if tree:
            return 1, g.length
        return len(g.continuations), max(len(g.context) + len(c) for c in g.continuations)

    order = sorted(range(len(groups)), key=lambda g: -shape(groups[g])[1])
    results: dict[int, list[float]] = {}
    bar = tqdm(total=len({g.item for g in groups}), desc=desc, unit="item", disable=not progress)
    done_items: set[int] = set()
    i = 0
    while i < len(order):
        batch, rows, width = [], 0, 0
        while i < len(order):  # longest first, so the first group sets the padded width
            n, w = shape(groups[order[i]])
            if batch and (rows + n) * max(width, w) > batch_tokens:
                break
            batch.append(order[i])
            rows, width = rows + n, max(width, w)
            i += 1
        chunk = [groups[b] for b in batch]
        scored = (
            _score_batch_tree(model, chunk, max_length, device)
            if tree
            else _score_batch_rows(model, chunk, max_length, device, pad)
        )
        for b, s in zip(batch, scored):
            results[b] = s
            if groups[b].item not in done_items:
                done_items.add(groups[b].item)
                bar.update(1)
    bar.close()
    return results


def _item_scores(items: list[MCItem], groups: list[Group], results: dict[int, list[float]]) -> list[ItemScore]:
    per_item: dict[int, dict[int, tuple[float, int]]] = {}  # item → choice → (loglik, tokens)
    for gi, g in enumerate(groups):
        for k, (j, ll) in enumerate(zip(g.choices, results[gi])):
            per_item.setdefault(g.item, {})[j] = (ll, len(g.continuations[k]))
    out = []
    for idx, item in enumerate(items):
        got = [per_item[idx][j] for j in range(len(item.continuations))]
        out.append(
            ItemScore(item.id, item.subject, item.gold, [ll for ll, _ in got], [n for _, n in got], item.norm_lengths())
        )
    return out
