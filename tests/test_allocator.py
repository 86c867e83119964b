"""camelid.allocator: the `camelid` command re-runs itself on tcmalloc where installed (once, without passing the
preload to what it starts), CAMELID_ALLOCATOR=system keeps glibc's malloc, and trim_heap hands freed pages back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from camelid import allocator

needs_tcmalloc = pytest.mark.skipif(
    allocator.fast_allocator_library() is None, reason="no tcmalloc (Debian: libtcmalloc-minimal4, scripts/setup.sh)"
)

# what a re-executed process sees: the allocator it runs on, its LD_PRELOAD, and how many times it started
CHILD = """
import os, sys
from pathlib import Path
from camelid import allocator
mark = Path(sys.argv[1])
mark.write_text(mark.read_text() + "x" if mark.exists() else "x")
allocator.use_fast_allocator()
print(allocator.loaded(), os.environ.get("LD_PRELOAD", "-"), len(mark.read_text()))
"""


def run_child(tmp_path, **env) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "starts")], env=environ, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@needs_tcmalloc
def test_reexecutes_once_on_tcmalloc_and_children_do_not_inherit_the_preload(tmp_path):
    mapped, preload, starts = run_child(tmp_path)
    assert "libtcmalloc" in mapped
    assert preload == "-"  # taken back out: a browser or compiler started from here keeps its own malloc
    assert starts == "2"  # the first start, then the re-executed one; no loop


@needs_tcmalloc
def test_an_earlier_preload_is_kept_for_children(tmp_path):
    keep = "libc.so.6"
    mapped, preload, _ = run_child(tmp_path, LD_PRELOAD=keep)
    assert "libtcmalloc" in mapped and preload == keep


def test_system_keeps_glibc(tmp_path):
    mapped, preload, starts = run_child(tmp_path, CAMELID_ALLOCATOR="system")
    assert mapped == "None" and preload == "-" and starts == "1"


def test_the_command_rejects_an_unknown_allocator_by_name():
    env = dict(os.environ, CAMELID_ALLOCATOR="jemalloc")
    out = subprocess.run([sys.executable, "-m", "camelid", "pull", "--list"], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "CAMELID_ALLOCATOR='jemalloc'" in out.stderr and "auto, system" in out.stderr


TRIM = """
import sys
from pathlib import Path
from camelid.allocator import trim_heap

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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_returns_freed_heap_pages():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # glibc's heap, as without tcmalloc
    out = subprocess.run([sys.executable, "-c", TRIM], env=env, capture_output=True, text=True, check=True)
    before, after = (float(x) for x in out.stdout.split()[:2])
    # 4,000 × 64 KB = 250 MB freed (all but 80 blocks); the untrimmed heap still holds most of it
    assert before - after > 150, (before, after)
