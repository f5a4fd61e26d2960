"""Run every benchmark in this folder in turn (each prints its table and writes results/<name>.json).

Usage: ``python benchmarks/run_all.py [--only predictor fewshot ...]``. Extra options of each
runner keep their defaults; run a runner directly to change them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    args = parser.parse_args()
    failed = []
    for name in args.only:
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / f"bench_{name}.py")], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
