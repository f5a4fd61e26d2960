"""The demo's wall time: its cases in one process against two processes of one thread each.

``medsam2kit demo`` with the bundled default model and its task models, on the held-out phantom
and (when ../shared/data is present) the held-out shared cases, run twice in one process of this
script: ``jobs=1`` with this process's torch threads (the previous release's way) and ``jobs=2``
(each case in a worker process of ``cores // 2`` threads, the CPU default since this release).
Reports each run's wall time, the slowest case and the mean Dice of each method in both runs
(the adapted rows differ by thread count: adaptation is not bit-identical across thread counts),
and the ratio two / one process (target < 0.75: the demo must stay well under three minutes).

Run: ``python benchmarks/bench_demo.py``. Prints a table and writes
``benchmarks/results/demo.json``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit._data import shared_data_dir  # noqa: E402
from medsam2kit.demo import run_demo  # noqa: E402
from medsam2kit.models import REFERENCE_CAROTID, REFERENCE_FETAL_HEAD, REFERENCE_VOLUMES  # noqa: E402
from medsam2kit.predictor import SAM2Predictor  # noqa: E402
from medsam2kit.reference import reference_predictor  # noqa: E402


def run(jobs: int, data: Path | None) -> dict[str, Any]:
    predictor = reference_predictor("cpu")
    task_models = {"box prompt": {"sam2 fetal-head model": SAM2Predictor.from_pretrained(REFERENCE_FETAL_HEAD, device="cpu")},
                   "tracking": {"sam2 carotid model": SAM2Predictor.from_pretrained(REFERENCE_CAROTID, device="cpu")}}
    volumes = SAM2Predictor.from_pretrained(REFERENCE_VOLUMES, device="cpu")  # as medsam2kit demo, with its mirror
    with tempfile.TemporaryDirectory() as tmp:
        seconds, summary = timed(lambda: run_demo(Path(tmp) / "demo", predictor, data_dir=data, jobs=jobs,
                                                  task_models=task_models, say=lambda line: None,
                                                  volumes_model=volumes, mirror=True))
    slowest = max(summary["seconds"], key=summary["seconds"].get)
    return {"jobs": jobs, "seconds": seconds, "slowest_case": slowest, "slowest_seconds": summary["seconds"][slowest],
            "case_seconds": summary["seconds"], "mean_dice": summary["mean_dice"]}


def main() -> None:
    data = shared_data_dir(Path(__file__).resolve().parent)
    if data is None:
        print("shared data absent (../shared/data or $MEDSAM2KIT_DATA): the phantom case only")
    threads = torch.get_num_threads()
    one, two = run(1, data), run(2, data)
    rows = [[f"1 process, {threads} threads", one["seconds"], f"{one['slowest_case']} {one['slowest_seconds']:.1f}", ""],
            ["2 processes, 1 thread each" if threads <= 2 else "2 processes", two["seconds"],
             f"{two['slowest_case']} {two['slowest_seconds']:.1f}", two["seconds"] / one["seconds"]]]
    print_table(f"medsam2kit demo, bundled models, {len(one['case_seconds'])} cases (cpu)",
                ["run", "wall s", "slowest case s", "ratio to 1 process (target < 0.75)"], rows)
    print_table("mean Dice per method (1 process / 2 processes)", ["method", "1 process", "2 processes"],
                [[m, v, two["mean_dice"].get(m, float("nan"))] for m, v in one["mean_dice"].items()])
    write_json("demo", {"torch_threads": threads, "one_process": one, "two_processes": two,
                        "ratio": two["seconds"] / one["seconds"]})


if __name__ == "__main__":
    main()
