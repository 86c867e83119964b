"""Run one function over many items on every core, or as tasks on a Ray cluster, with one progress bar.

    results = run_tasks(fn, context, items, workers=4, executor="local", bar=tqdm(...), sizes=[...])

`fn(context, item, report)` is a module-level function; `report(n)` moves the bar by n (bytes, say) while a
task runs. `context` is what every task shares (configuration, indexes): with local workers it reaches them by
fork, without a copy per task; on Ray it is put in the object store once. The largest items (by `sizes`) start
first; results come back in item order.

- workers=1: in this process, no pool (the simplest stack trace, and what tests of the logic use);
- executor=local: a process pool (fork where the OS has it: the context is not pickled);
- executor=ray: Ray tasks of one CPU each; `ray_address` joins a running cluster ("auto", "HOST:PORT"), "" starts
  a local one with `workers` CPUs, and an already connected driver (ray.init in the caller) is used as it is.

The first failure stops the run: tasks not yet started are cancelled and the error is raised as the task raised
it (a DataError still names its file and line). What finished tasks wrote stays for a resumed run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

from camelid.utils import log, require

_context: Any = None  # set in each local worker process by _start
_queue: Any = None


def cores() -> int:
    """CPUs this process may use (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_tasks(
    fn: Callable,
    context: Any,
    items: Sequence,
    *,
    workers: int,
    executor: str = "local",
    ray_address: str = "",
    bar=None,
    sizes: Sequence[int] | None = None,
) -> list:
    sizes = sizes if sizes is not None else [0] * len(items)
    if executor == "ray":
        return _on_ray(fn, context, items, workers, ray_address, bar, sizes)
    if workers <= 1 or len(items) <= 1:
        report = bar.update if bar is not None else (lambda n: None)
        return [fn(context, item, report) for item in items]
    return _on_processes(fn, context, items, workers, bar, sizes)


def _start(context, queue) -> None:
    global _context, _queue
    _context, _queue = context, queue


def _call(fn: Callable, item):
    return fn(_context, item, _queue.put)


def largest_first(sizes: Sequence[int]) -> list[int]:
    """Item positions, largest first (ties in item order): a pool that starts the long tasks first ends with short
    ones, so no worker is left finishing a large task alone (LPT scheduling)."""
    return sorted(range(len(sizes)), key=lambda i: -sizes[i])


def _on_processes(fn: Callable, context, items: Sequence, workers: int, bar, sizes: Sequence[int]) -> list:
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_start, initargs=(context, queue))
    futures: list = [None] * len(items)
    for i in largest_first(sizes):
        futures[i] = pool.submit(_call, fn, items[i])
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            _drain(queue, bar)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
        _drain(queue, bar)
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(queue, bar) -> None:
    while True:
        try:
            n = queue.get_nowait()
        except Exception:  # queue.Empty
            return
        if bar is not None:
            bar.update(n)


def _on_ray(fn: Callable, context, items: Sequence, workers: int, address: str, bar, sizes: Sequence[int]) -> list:
    ray = require("ray", "ray")
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            started = True
        log.info(f"ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs in the cluster")
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        shared = [ray.put(context)]  # in a list, so Ray hands the task the reference rather than the value
        refs: list = [None] * len(items)
        for i in largest_first(sizes):
            refs[i] = task.remote(fn, shared, items[i])
        where = {ref: i for i, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    ray.get(ref)
                except Exception as e:
                    for p in pending:
                        ray.cancel(p)
                    raise getattr(e, "cause", None) or e from None  # the task's own exception, not Ray's wrapper
                if bar is not None:
                    bar.update(sizes[where[ref]])  # a task's progress shows when it ends
        return ray.get(refs)
    finally:
        if started:
            ray.shutdown()


_ray_context: dict = {}  # in each Ray worker process: the current run's context, by its reference


def _ray_call(fn: Callable, shared: list, item):
    # Deserialized once per worker process, not once per task: a clean's context (the LM's tables, the benchmark
    # index with its filters: ~105 MB pickled) takes ~33 ms to unpickle, against ~0.1 s of work in a 0.3 MB shard.
    key = shared[0].hex()
    if key not in _ray_context:
        import ray

        _ray_context.clear()  # a worker process may serve several runs: keep only this one's
        _ray_context[key] = ray.get(shared[0])
    return fn(_ray_context[key], item, lambda n: None)
