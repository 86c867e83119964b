"""Which malloc a camelid process runs on, and handing freed memory back to the OS.

On the CPU every activation and gradient of a training step is a malloc'd buffer of a few MB. glibc's malloc raises
its mmap threshold as such blocks are freed (up to 32 MB), so they come from its heap, which keeps them resident and
fragments: a LoRA SFT step of SmolLM2-135M holds ~5 GB live but the process grows to ~10-11 GB. tcmalloc (gperftools,
Debian's libtcmalloc-minimal4) reuses freed blocks by size class and returns spans to the OS as it goes: the same run
peaked at 0.44x the RSS and ran 1.34x faster (benchmarks/RESULTS.md, SFT, the live-memory subsection).

An allocator has to be in place before the process's first malloc, so `use_fast_allocator` (called by the `camelid`
command before anything heavy is imported) executes the same command again with tcmalloc in LD_PRELOAD, once. The
re-executed process takes LD_PRELOAD back out of its environment, so what it starts (a browser, a compiler, another
tool) runs on its own allocator; camelid commands it starts choose again. CAMELID_ALLOCATOR=system keeps glibc's.
Without the library, or off Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

from camelid.utils import CamelidError

ENV = "CAMELID_ALLOCATOR"
CHOICES = ("auto", "system")  # auto: tcmalloc where installed, else the system's malloc
_REEXEC = "_CAMELID_ALLOCATOR_REEXEC"  # set for the re-executed process: the LD_PRELOAD to restore, after "="
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # gperftools' sonames, the minimal one (no profiler) first


def choice() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise CamelidError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def fast_allocator_library() -> str | None:
    """The soname of an installed tcmalloc (LD_PRELOAD finds it on the loader's path), or None."""
    if not sys.platform.startswith("linux"):
        return None
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def loaded() -> str | None:
    """The tcmalloc this process has mapped, if any (read from /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if "libtcmalloc" in line:
                    return line.split()[-1]
    except OSError:
        pass
    return None


def use_fast_allocator() -> None:
    """Re-execute this process (its original command line) with tcmalloc preloaded, where installed and not turned
    off; returns at once when there is nothing to do, and in the re-executed process."""
    if _REEXEC in os.environ:  # the second run: the preload is in place; children get the environment as it was
        previous = os.environ.pop(_REEXEC).partition("=")[2]
        if previous:
            os.environ["LD_PRELOAD"] = previous
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    if choice() == "system" or loaded():
        return
    library = fast_allocator_library()
    if library is None:
        return
    env = dict(os.environ)
    previous = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = f"{library}:{previous}" if previous else library
    env[_REEXEC] = "=" + previous
    # tcmalloc reports every allocation over 1 GB on stderr; a model's weights or logits are often that large
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def malloc_name() -> str:
    """What this process allocates with, as benchmarks name it: tcmalloc, or glibc (the system's malloc on Linux)."""
    return "tcmalloc" if loaded() else "glibc"


@functools.cache
def _release_calls() -> tuple:
    process = ctypes.CDLL(None)  # the symbols the process has loaded, a preloaded tcmalloc's among them
    trim = getattr(process, "malloc_trim", None)
    release = getattr(process, "MallocExtension_ReleaseFreeMemory", None)
    return tuple(call for call in ((lambda: trim(0)) if trim else None, release) if call is not None)


def trim_heap() -> None:
    """Give the allocator's free pages back to the OS: glibc's malloc_trim, and tcmalloc's release where it runs.
    With glibc a CPU process's resident memory otherwise keeps every page freed tensors once used (it returns only
    the heap's top), so a phase that follows a bigger one starts from the bigger one's peak. Touching the pages again
    costs a page fault each, so this belongs between phases (PPO's rollout and its mini-batch updates), not inside a
    training step."""
    for call in _release_calls():
        call()
