"""What every task loader produces and every scorer consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MCItem:
    """One multiple-choice question as log-likelihood scoring sees it: choice i is scored as
    log p(continuations[i] | contexts[i]). Most tasks share one context (every entry of `contexts` equal);
    WinoGrande-style "partial" scoring has one context per choice and a shared continuation."""

    id: str  # stable: "<task>/<subject or split>/<index in file>"
    task: str  # e.g. "mmlu", "arc_easy"
    subject: str  # MMLU/C-Eval/CMMLU subject, "" for single-subject tasks
    contexts: list[str]  # one per choice; few-shot examples are NOT included (see tasks.fewshot_prefix)
    continuations: list[str]  # one per choice, with the target delimiter (e.g. " A", " Paris")
    gold: int  # index of the correct choice
    choice_texts: list[str] | None = None  # the choices as shown to humans (report, samples); defaults to continuations
    # What acc_norm divides each log-likelihood by the length of: lm-eval's doc_to_choice strings, i.e. the choice
    # without the target delimiter ("A", "Paris"; WinoGrande's partial contexts). None: see `norm_lengths`.
    norm_texts: list[str] | None = None

    def norm_lengths(self) -> list[int]:
        """Characters per choice for acc_norm: of `norm_texts`; without them, of the continuations less their
        leading target delimiter (" "), or of the contexts when the choices are contexts (partial scoring)."""
        if self.norm_texts is not None:
            return [len(t) for t in self.norm_texts]
        if not self.shared_context:
            return [len(c) for c in self.contexts]
        return [len(c[1:] if c.startswith(" ") else c) for c in self.continuations]

    @property
    def shared_context(self) -> bool:
        return all(c == self.contexts[0] for c in self.contexts)
