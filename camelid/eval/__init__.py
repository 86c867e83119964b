"""Evaluation: multiple-choice benchmarks by log-likelihood, perplexity, reward-model accuracy, generation samples,
and the before/after report of a run."""
