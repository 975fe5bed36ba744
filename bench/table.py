"""The table `make bench` prints: each figure, its value and the issues' target."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _mmm(x: dict[str, Any], unit: str) -> str:
    return f"{x['median']} {unit} ({x['min']}-{x['max']})"


def _get(results: dict[str, Any], path: str) -> Any:
    cur: Any = results
    for part in path.split("/"):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


ROWS: list[tuple[str, str, Callable[[Any], str], str]] = [
    ("chain50: 50 tasks in a line", "workloads/chain50",
     lambda x: f"{_mmm(x['total_s'], 's')}; hop p50 {x['hop_ms']['p50']} ms, "
               f"p99 {x['hop_ms']['p99']} ms", "≤ 0.6 s, hop p50 ≤ 10 ms, p99 ≤ 30 ms"),
    ("fanout200: 1 → 200 → 1", "workloads/fanout200", lambda x: _mmm(x["total_s"], "s"),
     "≤ 0.9 s"),
    ("many_runs: 100 runs of a 3-chain at once", "workloads/many_runs",
     lambda x: f"{_mmm(x['total_s'], 's')}, {x['tasks_per_s']} tasks/s", "≤ 1.5 s"),
    ("sleep_fanout: 20 x sleep 1, default slots", "workloads/sleep_fanout",
     lambda x: _mmm(x["total_s"], "s"), "≤ 1.1 s"),
    ("idle: the whole stack, 30 s", "idle",
     lambda x: f"{_mmm(x['total_percent_of_a_core'], '% of a core')}; " + ", ".join(
         f"{k} {v}" for k, v in x["per_process_percent"].items()), "≤ 3 % of a core"),
    ("sustained: one-task runs through the REST API", "sustained",
     lambda x: f"{x['tasks_per_s']} tasks/s over {x['runs']} runs (submitted at "
               f"{x['submitted_per_s']}/s), max commands lag {x['max_commands_lag']}",
     "≥ 250 tasks/s, bounded lag"),
    ("orchestrator append burst (1,000 starts)", "burst_1000_starts",
     lambda x: f"{x['events_per_s']} events/s", "≥ 20,000 events/s"),
    ("orchestrator appends, scale group's starts", "scale/append",
     lambda x: f"{x['events_per_s']} events/s ({x['events']} events, first to last commit "
               f"{x['first_to_last_commit_s']} s)", "≥ 20,000 events/s"),
    ("projector catch-up", "log/million/projector",
     lambda x: f"{x['events_per_s']} events/s ({x['events']} events)", "≥ 20,000 events/s"),
    ("replay of one instance", "log/replay_10k",
     lambda x: f"{x['whole_history_ms']} ms for {x['events']} events "
               f"({x['snapshot_plus_tail_ms']} ms from its snapshot)", "≤ 100 ms"),
    ("projections rebuild", "log/million/rebuild",
     lambda x: f"{x['events_per_s']} events/s ({x['events']} events, {x['seconds']} s)",
     "events/s over 1,000,000"),
    ("scale: active runs (default 10,000)", "scale",
     lambda x: f"orchestrator RSS {x['orchestrator_rss_mb']} MB; SIGKILL → all loaded "
               f"{x['sigkill_to_all_loaded_s']} s", "≤ 300 MB, ≤ 10 s"),
    ("diamond: StartWorkflow → WorkflowSucceeded", "diamond_ms",
     lambda x: _mmm(x, "ms"), "—"),
    ("fibo-40-10 (Windmill)", "python/fibo-40-10",
     lambda x: f"{_mmm(x['total_s'], 's')}, hop {x['hop_ms']['median']} ms", "≤ 0.6 s"),
    ("fibo-10-33 (Windmill)", "python/fibo-10-33",
     lambda x: f"{_mmm(x['total_s'], 's')} = {x['total_over_floor']['median']} x floor "
               f"({x['compute_floor_s']} s)", "≤ 1.02 x floor"),
    ("fibo-200-parallel", "python/fibo-200-parallel", lambda x: _mmm(x["total_s"], "s"),
     "≤ 1.0 s"),
    ("Python task start, preloaded function", "python_start/warm_function_preloaded_ms",
     lambda x: f"p50 {x['p50']} ms", "p50 ≤ 3 ms"),
]


def table(results: dict[str, Any]) -> str:
    lines = ["| figure | measured | target |", "|---|---|---|"]
    for label, path, fmt, target in ROWS:
        value = _get(results, path)
        if value is not None:
            try:
                text = fmt(value)
            except (KeyError, TypeError) as exc:
                text = f"(incomplete: {exc!r})"
            lines.append(f"| {label} | {text} | {target} |")
    return "\n".join(lines)
