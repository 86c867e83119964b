"""Small helpers every layer may use: optional imports, hashing, atomic writes, logging."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("camelid")


class CamelidError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail with the pip command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CamelidError(f"this feature needs the optional package '{module}': pip install 'camelid[{extra}]'") from e


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off inside the block: loading an encoder checkpoint without BERT's pooler (which mean
    pooling never reads) otherwise prints a load report of missing weights."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


def camelid_home() -> Path:
    return Path(os.environ.get("CAMELID_HOME") or Path.home() / ".cache" / "camelid").expanduser()


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there a batched bf16 matmul measured
    ~4x faster than float32, while elsewhere bf16 is emulated and slower."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def fast_bf16(device_type: str) -> bool:
    """Whether bfloat16 compute is native, and so faster than float32, on this kind of device."""
    if device_type == "cuda":
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return device_type == "cpu" and native_bf16_cpu()


REMEMBER_DIGESTS_FROM = 64 << 20  # bytes: files this large have their sha256 remembered
RACY_NS = 2_000_000_000  # a file changed this recently is not remembered (git's "racy" files, the same cure)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The file's sha256. A file of REMEMBER_DIGESTS_FROM bytes or more has its digest remembered in
    $CAMELID_HOME/sha256.json under what stat says of it (size, mtime, ctime, inode, device), so a 100 GB corpus is
    read once, not at every run that names it (at ~0.5 GB/s, minutes each time). Writing to a file changes its
    ctime, which no tool sets back, so a changed file is hashed again."""
    st = os.stat(path)
    if st.st_size < REMEMBER_DIGESTS_FROM:
        return _sha256(path, chunk)
    key = os.path.realpath(path)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
    store = camelid_home() / "sha256.json"
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), list) and known[key][0] == stamp:
        return known[key][1]
    digest = _sha256(path, chunk)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        # file times tick in milliseconds: a write landing in the same tick as the last one would keep its stamp
        return digest
    known = {k: v for k, v in known.items() if os.path.exists(k)}  # files gone since: forgotten
    known[key] = [stamp, digest]
    try:  # a unique temporary name: two runs may hash at once; the last rename wins, both digests are right
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f"sha256.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(known), encoding="utf-8")
        os.replace(tmp, store)
    except OSError as e:  # a read-only home: hash again next time
        log.debug(f"could not remember the sha256 of {key}: {e}")
    return digest


def _sha256(path: str | os.PathLike, chunk: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it into place only if the block succeeds.

    A reader never sees a half-written folder: a crash leaves at most a `*.tmp-*` folder behind,
    which the next writer ignores.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    try:
        yield tmp
        follow_umask(tmp)
        _fsync_tree(tmp)
        if final.exists():
            # Swap in two renames so `final` is never missing for longer than one rename.
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask can only be read by setting it,
    which would race with threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the modes a plain open()/mkdir() would have had (0666 / 0777 less the
    umask). Temp-file writers (mkdtemp, and safetensors, which writes through a 0600 temp file and renames it) create
    private files; renamed into place they would stay 0600 / 0700 while every other file of the folder is 0644."""
    mask = current_umask()
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        if p.is_dir():
            want = 0o777 & ~mask
        else:  # keep execute bits a writer set on purpose
            want = (0o666 | (mode & 0o111)) & ~mask
        if mode & 0o7777 != want:
            p.chmod(want)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file + rename, so a crash or a concurrent reader never sees a truncated file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("[camelid] %(message)s"))
        log.addHandler(h)
    log.setLevel(level)
    log.propagate = False
