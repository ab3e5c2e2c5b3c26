"""Run the benchmarks: ``python -m bench`` runs them all, ``python -m bench auth`` one.

A benchmark is a module of this package with ``run() -> dict[str, Any]``; it prints its
own table and returns what to keep. Options after one benchmark's name go to its
``main(argv)`` or ``run(argv)`` (``python -m bench journeys --parked 20000``,
``python -m bench campaign 1000000 --provider outbox``). The JSON written to
``bench/results/<name>.json`` adds the machine it ran on (core count first: every
number depends on it).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench

RESULTS = Path(__file__).parent / "results"


def discover() -> list[str]:
    """Names of the benchmark modules, alphabetically."""
    names = []
    for info in pkgutil.iter_modules(bench.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if callable(getattr(module, "run", None)):
            names.append(info.name)
    return sorted(names)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str]) -> int:
    available = discover()
    # Names first; from the first argument that is no benchmark's name on (an option, or
    # a positional one like ``campaign 100000``), the arguments belong to the one benchmark.
    split = next(
        (i for i, arg in enumerate(argv) if arg.startswith("-") or arg not in available),
        len(argv),
    )
    names, options = argv[:split], argv[split:]
    chosen = names or available
    if options and len(chosen) != 1:
        if not names:
            print(
                f"unknown benchmark {options[0]!r}; available: {', '.join(available)}",
                file=sys.stderr,
            )
        else:
            print("options need exactly one benchmark name before them", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in chosen:
        print(f"== bench {name} ==", flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        # A benchmark taking options reads them in ``main(argv)`` or ``run(argv)``.
        if callable(entry):
            result = entry(options)
        else:
            result = module.run(options) if options else module.run()
        document = {
            "benchmark": name,
            "machine": machine(),
            "elapsed_s": round(time.perf_counter() - started, 1),
            **result,
        }
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"-> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
