"""What training will see, before it runs: the data sources read (kept, skipped and why), the chats rendered with the
chat template, their token lengths, the share of tokens the loss is computed on, and the first examples as
(text, supervised) runs. `camelid data` prints it; the web UI shows it with the supervised text highlighted."""

from __future__ import annotations

from dataclasses import dataclass, field

from camelid.data.formats import load_source
from camelid.data.loader import load_records, render_all, render_pairs
from camelid.data.templates import spans
from camelid.utils import CamelidError


@dataclass
class Preview:
    stats: list[dict]  # per source: read, kept, skipped, reasons, trimmed
    what: str  # "1000 chats" or "300 preference pairs"
    p50: int  # tokens per example, median
    longest: int
    supervised: float  # share of all tokens the loss is computed on
    dropped: dict
    examples: list[tuple[str, list[tuple[str, bool]]]] = field(default_factory=list)  # (label, spans)


def holds_pairs(spec: str) -> bool:
    """Whether a data source's first record is a preference pair (chosen/rejected)."""
    try:
        load_source(spec, "preference", max_samples=1)
    except CamelidError:
        return False
    return True


def preview(tok, train: list[str], data_cfg, shown: int = 2) -> Preview:
    pairs = data_cfg.format == "preference" or holds_pairs(train[0])
    records, stats = load_records(train, "preference" if pairs else "messages", data_cfg)
    if pairs:  # rm / dpo data: each side as the stage renders it, the final answer supervised
        rendered, dropped = render_pairs(tok, records, data_cfg)
        examples = [
            (f"{side} #{i}", getattr(p, side))
            for i, p in enumerate(rendered[:shown])
            for side in ("chosen", "rejected")
        ]
        rendered = [r for p in rendered for r in (p.chosen, p.rejected)]
        what = f"{len(rendered) // 2} preference pairs"
    else:
        rendered, dropped = render_all(tok, records, data_cfg)
        examples, what = [("", r) for r in rendered[:shown]], f"{len(rendered)} chats"
    if not rendered:
        raise CamelidError(f"no example left to train on from {', '.join(train)} (dropped: {dropped or 'none'})")
    lengths = sorted(len(r.input_ids) for r in rendered)
    return Preview(
        stats=stats,
        what=what,
        p50=lengths[len(lengths) // 2],
        longest=lengths[-1],
        supervised=sum(r.n_supervised for r in rendered) / max(1, sum(lengths)),
        dropped=dropped,
        examples=[(label, spans(tok, r)) for label, r in examples],
    )
