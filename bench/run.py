"""Run the benchmarks one after another: `python bench/run.py [onboarding] [backup] [monitor]`.

Each benchmark starts its own stack and database, runs mailops beside its peer figure or
tool, prints a table of ratios, and cleans up. Results go in docs/benchmarks.md by hand:
the figures move from machine to machine, the ratios are what to compare.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ("onboarding", "backup", "monitor")
HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; "
            f"choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in names or BENCHMARKS:
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"{name}.py")]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
