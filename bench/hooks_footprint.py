"""What the observability hooks cost a pool child per task: hot, cold, and in calls.

Runs Celery's own tracer (``build_tracer``, the function a prefork child calls for each message)
on the no-op task of ``noop_service.py``, results not stored, in a fresh process per variant:

- **calls**: Python and C calls per task, and the distinct functions and files they touch,
  counted with ``sys.setprofile`` (the same on any machine, under any load);
- **hot**: CPU per task in a tight loop (the process never leaves the CPU, so its code and data
  stay in the caches);
- **cold**: CPU per task when the process sleeps 2 ms before each task while a process that
  walks 64 MB of memory runs on the same core, as a pool child sleeps on its pipe while the
  other processes of a busy machine run. Only the task's own CPU is counted.

Each figure is printed against "Celery alone" measured in the same round; rounds alternate the
variants' order. Command: ``.venv/bin/python bench/hooks_footprint.py [--rounds 3]``.
Linux only (``taskset``, ``os.sched_setaffinity``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
#: Variant name -> what it turns on in the process before the tracer is built.
VARIANTS = (
    "celery alone",
    "metrics",
    "tracing, ratio 0",
    "tracing 10 %",
    "tracing 10 %, spans dropped at end",
    "metrics + tracing 10 %",
)
WIDTH = max(len(variant) for variant in VARIANTS)
HOT_TASKS = 20_000
COLD_TASKS = 1_500
PROFILED_TASKS = 200
#: The core the measured process and the memory walker share.
CORE = 1


def _setup(variant: str) -> Any:
    """Turn the variant's hooks on in this process; Celery's tracer for the no-op task."""
    if "metrics" in variant:
        # Before prometheus-client is imported: it picks its multiprocess values at import, as
        # a worker's pool child does (otherwise it would time in-memory values).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hooks-")
    if "tracing" in variant:
        # The receiver ``main`` runs reads the spans and discards them.
        os.environ.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0" if "ratio 0" in variant else "0.1"
    sys.path.insert(0, str(BENCH_DIR))
    import noop_service as svc
    from celery.app.trace import build_tracer

    task = svc.tasklane_app.tasks[svc.NOOP.name]
    task.ignore_result = True
    # Wired as a worker's app wires them: the run observers wrap the tracer set on the task.
    runs = svc.tasklane_app.run_observers
    runs.enabled = "metrics" in variant or "tracing" in variant
    if "metrics" in variant:
        from tasklane.observability.metrics import TaskRecorder
        from tasklane.observability.tracing import tracing_enabled
        from tasklane.wire.routing import queue_name

        labels = [(svc.NOOP.name, queue_name(svc.NOOP, svc.settings.namespace))]
        health: Any = None  # no probes served here
        recorder = TaskRecorder("bench", 0, health, labels, exemplars=tracing_enabled())
        runs.metrics = recorder
    if "tracing" in variant:
        from tasklane.observability.tracing import _instrument_worker, start_tracing

        if "dropped" in variant:
            _drop_spans_at_end()
        else:
            start_tracing("bench")
        _instrument_worker(runs)
    # Set on the task as a worker process sets it, so that the task's run observers wrap it.
    task.__trace__ = build_tracer(
        task.name, task, app=svc.tasklane_app, eager=False, propagate=False
    )
    return task.__trace__


def _drop_spans_at_end() -> None:
    """Tracing as ``start_tracing`` sets it up, except that ended spans are dropped, not queued.

    Tells what the batch export (its queue and thread) costs apart from the spans themselves.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from tasklane.observability.sampling import ParentBasedTraceIdRatio, TraceIdsDrawnAhead

    provider = TracerProvider(
        sampler=ParentBasedTraceIdRatio(0.1), id_generator=TraceIdsDrawnAhead()
    )
    provider.add_span_processor(SpanProcessor())  # its on_end does nothing
    trace.set_tracer_provider(provider)


def _measure(variant: str, mode: str) -> dict[str, float]:
    """In this (fresh) process: the variant's figure for ``mode``."""
    tracer = _setup(variant)
    import noop_service as svc

    from tasklane.wire.headers import PUBLISHED_AT

    name = svc.NOOP.name

    def run(n: int) -> None:
        task_id = uuid.uuid4().hex
        request = {
            "id": task_id,
            "task": name,
            "delivery_info": {"routing_key": "bench", "exchange": ""},
            "hostname": "bench",
            PUBLISHED_AT: time.time(),  # as a publisher stamps it: the queue-wait histogram
        }
        tracer(task_id, (), {"n": n}, request)

    for n in range(2_000):  # warm-up: imports, caches, the first exports
        run(n)
    if mode == "calls":
        calls: collections.Counter[tuple[str, str]] = collections.Counter()

        def profile(frame: Any, event: str, arg: Any) -> None:
            if event == "call":
                calls[(frame.f_code.co_filename, frame.f_code.co_name)] += 1
            elif event == "c_call":
                calls[("C", getattr(arg, "__qualname__", repr(arg)))] += 1

        sys.setprofile(profile)
        for n in range(PROFILED_TASKS):
            run(n)
        sys.setprofile(None)
        python = {key: count for key, count in calls.items() if key[0] != "C"}
        return {
            "calls": sum(calls.values()) / PROFILED_TASKS,
            "functions": float(len(calls)),
            "files": float(len({key[0] for key in python})),
        }
    os.sched_setaffinity(0, {CORE})
    cpu = 0.0
    tasks = HOT_TASKS if mode == "hot" else COLD_TASKS
    for n in range(tasks):
        if mode == "cold":
            time.sleep(0.002)  # the memory walker runs meanwhile
        started = time.process_time()
        run(n)
        cpu += time.process_time() - started
    return {"us": cpu / tasks * 1e6}


def _child(variant: str, mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", variant, mode],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _walker() -> subprocess.Popen[bytes]:
    """A process that walks 64 MB of memory for ever, on the measured core."""
    code = "b = bytearray(64 << 20)\nwhile True:\n    for i in range(0, len(b), 64): b[i] ^= 1\n"
    walker = subprocess.Popen([sys.executable, "-c", code])
    os.sched_setaffinity(walker.pid, {CORE})
    return walker


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(*args.child)))
        return 0

    sys.path.insert(0, str(BENCH_DIR))
    from observability import span_sink

    with span_sink() as sink:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
        _report(args.rounds)
    return 0


def _report(rounds: int) -> None:
    print("per task, in one process (Celery's tracer, no result stored):")
    base = _child(VARIANTS[0], "calls")
    for variant in VARIANTS:
        figures = base if variant == VARIANTS[0] else _child(variant, "calls")
        print(
            f"  {variant:{WIDTH}} {figures['calls']:5.0f} calls"
            f" ({figures['calls'] - base['calls']:+4.0f}),"
            f" {figures['functions']:4.0f} distinct functions, {figures['files']:3.0f} files"
        )
    ratios: dict[str, dict[str, list[float]]] = {
        mode: {v: [] for v in VARIANTS} for mode in ("hot", "cold")
    }
    micros: dict[str, dict[str, list[float]]] = {
        mode: {v: [] for v in VARIANTS} for mode in ("hot", "cold")
    }
    for round_no in range(rounds):
        order = VARIANTS if round_no % 2 == 0 else tuple(reversed(VARIANTS))
        for mode in ("hot", "cold"):
            walker = _walker() if mode == "cold" else None
            try:
                figures = {variant: _child(variant, mode)["us"] for variant in order}
            finally:
                if walker is not None:
                    walker.kill()
                    walker.wait()
            for variant in VARIANTS:
                micros[mode][variant].append(figures[variant])
                ratios[mode][variant].append(figures[variant] / figures[VARIANTS[0]])
            print(
                f"  round {round_no + 1} {mode}: "
                + ", ".join(f"{v} {figures[v]:.0f} us" for v in VARIANTS),
                flush=True,
            )
    print("CPU per task, median over rounds (ratio to Celery alone in the same round):")
    for variant in VARIANTS:
        hot, cold = micros["hot"][variant], micros["cold"][variant]
        print(
            f"  {variant:{WIDTH}} hot {statistics.median(hot):6.1f} us"
            f" ({statistics.median(ratios['hot'][variant]):.2f}x),"
            f" cold {statistics.median(cold):6.1f} us"
            f" ({statistics.median(ratios['cold'][variant]):.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
