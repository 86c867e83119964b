"""KV memory in fixed-size blocks, with content-addressed reuse of full blocks (prefix caching).

A request's KV lives in a list of block ids (its block table); memory grows one block at a time as it generates,
so nothing is reserved for the maximum length. A full block is registered under a hash of its tokens chained with
the hash of the block before it, so two prompts that start alike (a system prompt, the earlier turns of a session)
map to the same blocks. Blocks nobody uses any more keep their contents and stay findable until their memory is
needed, oldest first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


class OutOfBlocks(Exception):
    pass


def chain_hash(parent: bytes, tokens: list[int]) -> bytes:
    return hashlib.blake2b(parent + np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=16).digest()


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.refs = [0] * num_blocks
        self.by_hash: dict[bytes, int] = {}
        self.hash_of: dict[int, bytes] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()  # unreferenced blocks that still hold a cached prefix

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free) - len(self.idle)

    def allocate(self) -> int:
        if self.free:
            block = self.free.pop()
        elif self.idle:
            block, _ = self.idle.popitem(last=False)
            del self.by_hash[self.hash_of.pop(block)]
        else:
            raise OutOfBlocks
        self.refs[block] = 1
        return block

    def can_allocate(self, n: int) -> bool:
        return len(self.free) + len(self.idle) >= n

    def match(self, tokens: list[int], max_blocks: int) -> tuple[list[int], bytes]:
        """Cached blocks holding the longest block-aligned prefix of `tokens`; each is now referenced once more."""
        blocks, h = [], b""
        for i in range(max_blocks):
            nh = chain_hash(h, tokens[i * self.block_size : (i + 1) * self.block_size])
            block = self.by_hash.get(nh)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.idle[block]
            self.refs[block] += 1
            blocks.append(block)
            h = nh
        return blocks, h

    def register(self, block: int, h: bytes) -> None:
        """Make a just-filled block findable; if the same content is already cached, keep the older copy."""
        if h not in self.by_hash and block not in self.hash_of:
            self.by_hash[h] = block
            self.hash_of[block] = h

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.hash_of:
                    self.idle[block] = None
                else:
                    self.free.append(block)


class KVCache:
    """Per-layer key/value tensors addressed by slot = block * block_size + offset."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (num_blocks * block_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8
