"""What ``import tasklane.publish`` costs an upstream, in fresh interpreters.

Prints the median of 5 runs of each, in one run of this script:

* ``python -c pass``: the interpreter alone;
* the floor: the third-party modules a publisher cannot do without (pydantic, Kombu's producer,
  the OpenTelemetry API), imported directly;
* ``import tasklane.publish``, and its ratio to the floor (1.0x would mean Tasklane adds nothing);
* ``import tasklane.worker.app`` for contrast (what a worker loads);

then the ten modules with the most self time under ``-X importtime``. Target: ``import
tasklane.publish`` at or under 0.3 s on the 2-core CI machine.

    .venv/bin/python bench/imports.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

RUNS = 5
FLOOR = "import pydantic, kombu.messaging, opentelemetry.trace"
CASES = {
    "python -c pass": "pass",
    "third-party floor": FLOOR,
    "import tasklane.publish": "import tasklane.publish",
    "import tasklane.worker.app": "import tasklane.worker.app",
}
TARGET_SECONDS = 0.3


def seconds(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def attribution(code: str, top: int = 10) -> list[tuple[int, str]]:
    """(self microseconds, module) of the slowest modules ``code`` imports."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        rows.append((int(own), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    seconds("import tasklane.publish")  # warm the bytecode caches once
    medians: dict[str, float] = {}
    for label, code in CASES.items():
        runs = [seconds(code) for _ in range(RUNS)]
        medians[label] = statistics.median(runs)
        spread = ", ".join(f"{r:.3f}" for r in runs)
        print(f"{label:28} median {medians[label]:.3f} s  ({spread})")
    publish = medians["import tasklane.publish"]
    floor = medians["third-party floor"]
    print(f"\nimport tasklane.publish / third-party floor: {publish / floor:.2f}x")
    verdict = "met" if publish <= TARGET_SECONDS else "missed"
    print(f"target <= {TARGET_SECONDS} s: {verdict} ({publish:.3f} s)")
    print("\nslowest modules of import tasklane.publish (self time):")
    for own, name in attribution("import tasklane.publish"):
        print(f"  {own / 1000:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
