"""utils.trim_heap: freed heap memory goes back to the OS (what PPO calls between its phases)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from camelid.utils import _malloc_trim

CHILD = """
import sys
from pathlib import Path
from camelid.utils import trim_heap

def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

# 64 KB blocks sit below glibc's mmap threshold, so they come from the heap; keeping every 50th alive pins the
# heap's top, so freeing the rest leaves their pages resident until they are trimmed
blocks = [bytearray(b"x" * 65536) for _ in range(4000)]
kept = blocks[::50]
del blocks
before = rss_mb()
trim_heap()
after = rss_mb()
print(before, after, len(kept))
"""


@pytest.mark.skipif(_malloc_trim() is None or not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_returns_freed_heap_pages():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout.split()
    before, after = float(out[0]), float(out[1])
    # 4,000 × 64 KB = 250 MB freed (all but 80 blocks); the untrimmed heap still holds most of it
    assert before - after > 150, (before, after)
