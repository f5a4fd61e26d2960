"""The slow checks: the tests marked ``slow`` (each over ~40 s on two CPU cores), which the
default test run leaves out to keep it under 15 minutes, run here with their wall times.

They are semantic checks of the bundled models on held-out shared cases (one-shot adaptation
helps on a CT lesion and on FATE-SAM's hippocampus, FATE-SAM with registered supports, a
newcomer's fine-tune moves held-out Dice, the ultrasound study end to end); they skip cleanly
without ``../shared/data``. The same set: ``python -m pytest -m slow``.

Run: ``python benchmarks/bench_slow_tests.py``. Prints a table (test, outcome, seconds) and writes
``benchmarks/results/slow_tests.json``; exits 1 when any of them fails.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
    return "passed"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "slow.xml"
        code = subprocess.run([sys.executable, "-m", "pytest", "-m", "slow", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}"], cwd=ROOT, check=False).returncode
        if not report.exists():
            print(f"pytest wrote no report (exit {code})")
            return 1
        cases = ET.parse(report).getroot().iter("testcase")
        rows = [(f"{c.get('classname', '').rsplit('.', 1)[-1]}::{c.get('name')}", _outcome(c), float(c.get("time", 0)))
                for c in cases]
    print_table("slow tests (pytest -m slow)", ["test", "outcome", "seconds"], rows)
    write_json("slow_tests", {"exit_code": code, "tests": [{"test": t, "outcome": o, "seconds": s} for t, o, s in rows]})
    return 0 if code in (0, 5) and all(o in ("passed", "skipped") for _, o, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
