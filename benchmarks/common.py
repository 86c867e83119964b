"""What the benchmark scripts share: a one-line description of the machine, RESULTS.md section writing, random
models of public shapes, and a `camelid serve` subprocess on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the benchmarks import camelid from this checkout
    sys.path.insert(0, str(ROOT))


def machine(load_before: float | None = None) -> str:
    """CPU, cores, library versions and GPU; with `load_before` (`os.getloadavg()[0]` when the benchmark started),
    the 1-minute load average then and now: what else the machine was running (now includes the benchmark)."""
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    try:
        import peft
        import transformers

        text += f", transformers {transformers.__version__}, peft {peft.__version__}"
    except ImportError:
        pass
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    if load_before is not None:
        text += f"; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    return text


# Public model shapes built with random weights where only cost matters (throughput, memory), so no weights need
# fetching; the token ids fed to them come from the SmolLM2 tokenizer (all < 49,152, valid ids of any table here).
RANDOM_MODELS = {
    "qwen2-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        tie_word_embeddings=True,
    ),
    # a few-MB model of the same family, to smoke-test the scripts' random-model paths in seconds
    "qwen2-tiny": dict(
        model_type="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=49152,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}


def build_random_model(name: str, dtype: str, out_dir: Path, seed: int, tokenizer=None) -> None:
    """A randomly initialised model of a `RANDOM_MODELS` shape saved to `out_dir` (with `tokenizer` when given)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(RANDOM_MODELS[name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def busy_cpu_s() -> float | None:
    """Seconds of non-idle CPU time on the whole machine, from /proc/stat (Linux only)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# glibc serves allocations below its mmap threshold (raised as large blocks are freed, up to 32 MB) from the heap,
# which keeps freed activations resident: a CPU process's peak RSS then counts what its heap kept, not what was live.
# A fixed 1 MB threshold maps and unmaps every sizeable tensor instead, so peak RSS is the live peak — what a GPU's
# peak allocated memory reports. Steps run ~1.5× slower (fresh pages fault in), so times of this mode mean nothing.
LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
LIVE_MEMORY_HELP = (
    "CPU workers give freed tensors back to the OS at once (glibc mmap threshold 1 MB), so peak RSS is the live "
    "peak, not what the heap keeps; steps run ~1.5x slower, so this mode's times are not comparable"
)


def run_worker(cmd: list[str], spec: dict, label: str, cpu_only: bool) -> dict:
    """Run a benchmark's worker subprocess with `spec["threads"]` threads, offline, and read back the JSON it
    writes to spec["result"], adding its wall time (process_s) and the CPU the rest of the machine used meanwhile
    (others_cores): with 2 cores, another busy process oversubscribes torch's threads and makes steps slower."""
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(spec["threads"]),
        MKL_NUM_THREADS=str(spec["threads"]),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""  # on CPU even where a GPU exists
    print(f"--- {label}: running in a subprocess", flush=True)
    busy0, kids0, t0 = busy_cpu_s(), children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    if proc.returncode != 0:
        sys.exit(f"{label} failed with exit code {proc.returncode}")
    wall = time.perf_counter() - t0
    result = json.loads(Path(spec["result"]).read_text())
    result["process_s"] = wall
    if busy0 is not None:
        result["others_cores"] = max(0.0, (busy_cpu_s() - busy0 - (children_cpu_s() - kids0)) / wall)
    return result


def write_results(out: Path, section: str, intro: str, key: str, body: str) -> None:
    """Replace (or add) the `### key` subsection of a benchmark's `section`, leaving everything else as is."""
    text = out.read_text(encoding="utf-8") if out.exists() else "# camelid benchmarks\n"
    sub = f"### {key}\n\n{body.strip()}\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro}\n{sub}"
    else:
        start = text.index(section)
        nxt = re.search(r"^## ", text[start + len(section) :], flags=re.M)
        end = start + len(section) + nxt.start() if nxt else len(text)
        block = text[start:end]
        subs = re.split(r"(?m)^(?=### )", block)
        head, rest = subs[0], subs[1:]
        head = f"{section}\n\n{intro}\n"  # keep the description current
        replaced = False
        for i, s in enumerate(rest):
            if s.startswith(f"### {key}\n"):
                rest[i], replaced = sub + "\n", True
        if not replaced:
            rest.append(sub + "\n")
        block = head + "".join(s if s.endswith("\n\n") else s.rstrip("\n") + "\n\n" for s in rest)
        text = text[:start] + block.rstrip("\n") + ("\n\n" + text[end:].lstrip("\n") if text[end:].strip() else "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


def publish(out: str, section: str, intro: str, key: str, body: list[str] | str) -> None:
    """Print a benchmark's report (lines or text), and write it as the `### key` subsection of RESULTS.md unless out
    is ''."""
    text = body if isinstance(body, str) else "\n".join(body)
    print(text)
    if out:
        write_results(Path(out), section, intro, key, text)


@contextlib.contextmanager
def camelid_serve(model: str, *overrides: str, quiet: bool = True):
    """`camelid serve MODEL` on a free localhost port, yielding its URL once /health answers; stopped with SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.DEVNULL if quiet else None
    cmd = [sys.executable, "-m", "camelid", "serve", model, f"serve.port={port}", *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                raise RuntimeError(f"camelid serve exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
