"""/metrics: the engine's counters and the errors the API answered, in Prometheus' text format."""

from __future__ import annotations

from typing import Any


def prometheus(s: dict, errors: dict[tuple[int, str, str], int]) -> str:
    """`s` is Engine.stats(); `errors` counts answered errors by (status, kind, sent: "response" or "stream")."""
    total = s["kv_blocks_total"]
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, value: Any, labels: str = "") -> None:
        if not any(line.startswith(f"# HELP {name} ") for line in lines):
            lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.append(f"{name}{labels} {value}")

    metric("camelid_requests_waiting", "gauge", "Requests queued for the engine.", s["waiting"])
    metric("camelid_requests_running", "gauge", "Requests in the running batch.", s["running"])
    metric("camelid_kv_blocks_used", "gauge", "KV blocks held by running requests.", s["kv_blocks_used"])
    metric("camelid_kv_blocks_cached", "gauge", "Idle KV blocks kept for prefix reuse.", s["kv_blocks_cached"])
    metric("camelid_kv_blocks_total", "gauge", "KV blocks in the cache.", total)
    metric(
        "camelid_kv_usage_ratio",
        "gauge",
        "Share of KV blocks held by running requests.",
        round(s["kv_blocks_used"] / total, 4),
    )
    metric(
        "camelid_generation_tokens_per_second",
        "gauge",
        "Generated tokens/s over the last 10 s.",
        round(s["tokens_per_second"], 2),
    )
    metric("camelid_generated_tokens_total", "counter", "Tokens sampled.", s.get("generated_tokens", 0))
    metric(
        "camelid_prompt_tokens_computed_total",
        "counter",
        "Prompt tokens run through the model.",
        s.get("prompt_tokens_computed", 0),
    )
    metric(
        "camelid_prompt_tokens_cached_total",
        "counter",
        "Prompt tokens served from the prefix cache.",
        s.get("prompt_tokens_cached", 0),
    )
    metric("camelid_preemptions_total", "counter", "Requests preempted for KV memory.", s.get("preemptions", 0))
    for reason in ("stop", "length", "abort", "error"):
        metric(
            "camelid_requests_total",
            "counter",
            "Finished requests by finish reason.",
            s.get(f"requests_{reason}", 0),
            f'{{finish_reason="{reason}"}}',
        )
    for (status, kind, sent), n in sorted(errors.items()):
        metric(
            "camelid_http_errors_total",
            "counter",
            "Errors answered, by status, kind (the error's code, or its "
            "type) and where they were sent: as the response, or as an event inside a stream.",
            n,
            f'{{status="{status}",kind="{kind}",sent="{sent}"}}',
        )
    return "\n".join(lines) + "\n"
