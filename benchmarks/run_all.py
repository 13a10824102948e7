"""Run every benchmark, one after the other, so none disturbs another.

Each writes its markdown table into benchmarks/results/. Extra arguments
are not forwarded; run a script alone to change its options.

Usage: python benchmarks/run_all.py   (or: make bench)
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_aupro.py", "bench_accuracy.py", "bench_levels.py", "bench_speed.py",
           "bench_aspect.py", "bench_export.py", "bench_scale.py",
           "bench_decisions.py"]


def main():
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
