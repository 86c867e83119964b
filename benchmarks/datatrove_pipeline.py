"""The datatrove side of benchmarks/clean_vs_datatrove.py; runs in datatrove's own virtual environment.

    python datatrove_pipeline.py INPUT_FOLDER WORK_FOLDER LANGUAGE TASKS RESULT.json [--gopher]

datatrove's documented way to deduplicate after filtering: a filtering pipeline writes its output, then the four
MinHash stages (signatures, buckets, clusters, filter) run on it, each a LocalPipelineExecutor with TASKS tasks
on TASKS workers (a task reads whole files: the input is split into several files). Rules: MinHash (its defaults:
word 5-grams, 14 buckets x 8 hashes), after GopherRepetitionFilter (its defaults) with --gopher. Writes the kept ids
and seconds.
"""

import gzip
import json
import sys
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.filters import GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter


def main(src: str, work: str, language: str, tasks: int, result: str, gopher: bool) -> None:
    w = Path(work)
    config = MinhashConfig()
    t0 = time.perf_counter()
    stages = [
        [
            JsonlReader(src, glob_pattern="*.jsonl"),
            *([GopherRepetitionFilter(language=language)] if gopher else []),
            JsonlWriter(str(w / "filtered"), compression=None),
        ],
        [
            JsonlReader(str(w / "filtered")),
            MinhashDedupSignature(output_folder=str(w / "signatures"), config=config, language=language),
        ],
        [MinhashDedupBuckets(input_folder=str(w / "signatures"), output_folder=str(w / "buckets"), config=config)],
        [MinhashDedupCluster(input_folder=str(w / "buckets"), output_folder=str(w / "remove_ids"), config=config)],
        [
            JsonlReader(str(w / "filtered")),
            MinhashDedupFilter(input_folder=str(w / "remove_ids")),
            JsonlWriter(str(w / "kept"), compression=None),
        ],
    ]
    seconds = []
    for i, pipeline in enumerate(stages):
        n = config.num_buckets if i == 2 else 1 if i == 3 else tasks
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline, tasks=n, workers=min(n, tasks), logging_dir=str(w / f"logs{i}")).run()
        seconds.append(time.perf_counter() - t)
    kept = []
    for f in sorted((w / "kept").glob("*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as lines:
            kept += [json.loads(x)["id"] for x in lines]
    total = time.perf_counter() - t0
    Path(result).write_text(json.dumps({"seconds": total, "stage_seconds": seconds, "kept": kept}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], "--gopher" in sys.argv[6:])
