"""``/v1/metrics``: the server's counters in Prometheus text format (no client library needed)."""

from __future__ import annotations

import sys
from typing import Any


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(state: Any) -> str:
    """Requests by call and status, queue depth, jobs by state, job durations, GPU memory."""
    lines = ["# HELP histoclip_requests_total Requests answered, by call and HTTP status.",
             "# TYPE histoclip_requests_total counter"]
    guard = getattr(state, "guard", None)
    counts = dict(guard.counts) if guard is not None else {}
    for (call, status), n in sorted(counts.items()):
        lines.append(f'histoclip_requests_total{{call="{_label(call)}",status="{status}"}} {n}')
    lines += ["# HELP histoclip_queue_depth Jobs waiting for a worker.", "# TYPE histoclip_queue_depth gauge",
              f"histoclip_queue_depth {state.jobs.queue_depth()}",
              "# HELP histoclip_jobs Jobs known to the server, by state.", "# TYPE histoclip_jobs gauge"]
    by_state: dict[str, int] = {}
    for job in state.jobs.jobs():
        by_state[str(job.state)] = by_state.get(str(job.state), 0) + 1
    for name, n in sorted(by_state.items()):
        lines.append(f'histoclip_jobs{{state="{name}"}} {n}')
    lines += ["# HELP histoclip_job_duration_seconds Time jobs ran, by call.",
              "# TYPE histoclip_job_duration_seconds summary"]
    for call, (count, total) in sorted(dict(state.jobs.durations).items()):
        lines.append(f'histoclip_job_duration_seconds_count{{call="{_label(call)}"}} {count}')
        lines.append(f'histoclip_job_duration_seconds_sum{{call="{_label(call)}"}} {total:.6f}')
    batcher = getattr(state, "batcher", None)
    if batcher is not None:
        lines += batcher.metric_lines()
    lines += _gpu_lines()
    return "\n".join(lines) + "\n"


def _gpu_lines() -> list[str]:
    """GPU memory, when torch is loaded (metrics never import it) and has finished importing:
    a worker thread may be in the middle of ``import torch`` while metrics are scraped."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    if cuda is None or not hasattr(cuda, "memory_allocated") or not cuda.is_available():
        return []
    lines = ["# HELP histoclip_gpu_memory_bytes GPU memory allocated by torch, by device.",
             "# TYPE histoclip_gpu_memory_bytes gauge"]
    for i in range(cuda.device_count()):
        lines.append(f'histoclip_gpu_memory_bytes{{device="cuda:{i}"}} {cuda.memory_allocated(i)}')
    return lines
