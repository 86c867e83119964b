"""The inference core: continuous batching over a paged KV cache, one concept per file.

    engine.py    Engine: the step loop and the scheduler (admission, block reservation, preemption)
    request.py   Request (a request's state), Output (a streamed delta), Completion (the whole result)
    kv.py        the block pool (paged KV memory, prefix caching) and the KV tensors
    paged.py     attention over the paged cache, as a transformers attention implementation
    sampling.py  SamplingParams and the pure functions that turn logits into the next token
    detok.py     incremental detokenization in whole characters
    waiting.py   the waiting queue, fair between owners (API keys)

chat, serve, evaluation, PPO rollouts and knowledge-base answers all generate through it; it imports only model,
config and utils below it.
"""

from camelid.engine.engine import Engine
from camelid.engine.request import Completion, Output
from camelid.engine.sampling import SamplingParams

__all__ = ["Completion", "Engine", "Output", "SamplingParams"]
