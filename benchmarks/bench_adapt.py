"""What adaptation costs and buys: one-prompt propagation from each label's mask, and FATE-SAM
from labelled supports, plain against adapted (:mod:`medsam2kit.adapt`), side by side in one run.

The held-out shared 3D cases (../shared/data; two held-out phantoms without it), the bundled
reference model at its 128 px, slices zoomed as the tasks do
(:func:`medsam2kit.tasks.one_prompt_propagation`), ``adapt=None`` against ``adapt=AdaptConfig()``
(200 steps). Reports the wall time of each (one call: the adapted one is dominated by its
training steps), the ratio adapted / plain, the time per adaptation step, the memory the
adapted copy holds (its parameters and AdamW's two moments) and both Dice means. FATE-SAM: the
held-out hippocampus from the training cases as supports
(:class:`~medsam2kit.fewshot.FewShotPipeline` with and without ``adapt``; a held-out phantom
from two others without the shared data).

Run: ``python benchmarks/bench_adapt.py [--steps 200]``. Prints a table and writes
``benchmarks/results/adapt.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, timed, write_json  # noqa: E402

from medsam2kit._data import shared_data_dir  # noqa: E402
from medsam2kit.adapt import AdaptConfig  # noqa: E402
from medsam2kit.demo import keep_labels, training_supports  # noqa: E402
from medsam2kit.fewshot import FewShotPipeline  # noqa: E402
from medsam2kit.metrics import dice  # noqa: E402
from medsam2kit.predictor import SAM2Predictor  # noqa: E402
from medsam2kit.reference import heldout_phantoms, shared_volumes  # noqa: E402
from medsam2kit.tasks import one_prompt_propagation  # noqa: E402
from medsam2kit.volume import Volume  # noqa: E402


def cases() -> list[tuple[str, Volume, Volume]]:
    """The held-out shared volumes, or two held-out phantoms when the shared data is absent."""
    data = shared_data_dir(Path(__file__).resolve().parent)
    found = [] if data is None else shared_volumes(data)
    if not found:
        print("shared data absent (../shared/data or $MEDSAM2KIT_DATA): two phantoms instead")
        return [(f"phantom_{k}", image, label) for k, (image, label) in enumerate(heldout_phantoms(0, 2))]
    return [(c.name, c.image, c.label) for c in found]


def fewshot_case() -> tuple[str, Volume, Volume, tuple[tuple[Volume, Volume], ...]]:
    """The held-out hippocampus and the training cases as supports (labels 1, 2), or a held-out
    phantom and two others."""
    data = shared_data_dir(Path(__file__).resolve().parent)
    hippo = [] if data is None else [c for c in shared_volumes(data) if c.dataset == "msd_hippocampus"]
    if not hippo or data is None:
        query, *supports = heldout_phantoms(0, 3)
        return "phantom_0", *query, tuple((im, keep_labels(lab, (1, 2))) for im, lab in supports)
    return (hippo[0].name, hippo[0].image, keep_labels(hippo[0].label, (1, 2)),
            tuple((im, keep_labels(lab, (1, 2))) for im, lab in training_supports(data)))


def mean_dice(labels: np.ndarray, truth: np.ndarray, wanted: list[int]) -> float:
    return float(np.mean([dice(labels == lab, truth == lab) for lab in wanted]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=AdaptConfig().steps)
    args = ap.parse_args()
    config = AdaptConfig(steps=args.steps)
    predictor = SAM2Predictor.from_pretrained("reference")
    trainable = sum(p.numel() for n, p in predictor.model.named_parameters() if not n.startswith("image_encoder."))
    total = sum(p.numel() for p in predictor.model.parameters())
    copy_mb = (total + 2 * trainable) * 4 / 2**20  # the copy, and AdamW's moments of what it trains
    rows, records = [], []
    one_prompt_propagation(predictor, *heldout_phantoms(0, 1)[0])  # warm-up
    for name, image, label in cases():
        truth = np.asarray(label.array)
        plain_s, plain = timed(lambda: one_prompt_propagation(predictor, image, label))
        adapted_s, adapted = timed(lambda: one_prompt_propagation(predictor, image, label, adapt=config))
        wanted = sorted(plain.prompt_slices)
        record = {"task": "propagation", "case": name, "labels": len(wanted), "plain_s": plain_s,
                  "adapted_s": adapted_s,
                  "ratio_adapted_plain": adapted_s / plain_s, "s_per_step": (adapted_s - plain_s) / config.steps,
                  "dice_plain": mean_dice(plain.labels, truth, wanted),
                  "dice_adapted": mean_dice(adapted.labels, truth, wanted)}
        records.append(record)
        rows.append(["propagation", name[:30], len(wanted), plain_s, adapted_s, adapted_s / plain_s,
                     record["s_per_step"], record["dice_plain"], record["dice_adapted"]])
    name, image, label, supports = fewshot_case()
    truth = np.asarray(label.array)
    plain_s, plain_map = timed(lambda: FewShotPipeline(predictor, supports)(image).array)
    adapted_s, adapted_map = timed(lambda: FewShotPipeline(predictor, supports, adapt=config)(image).array)
    record = {"task": "fewshot", "case": name, "labels": 2, "supports": len(supports), "plain_s": plain_s,
              "adapted_s": adapted_s, "ratio_adapted_plain": adapted_s / plain_s,
              "s_per_step": (adapted_s - plain_s) / config.steps, "dice_plain": mean_dice(plain_map, truth, [1, 2]),
              "dice_adapted": mean_dice(adapted_map, truth, [1, 2])}
    records.append(record)
    rows.append(["FATE-SAM", name[:30], 2, plain_s, adapted_s, adapted_s / plain_s, record["s_per_step"],
                 record["dice_plain"], record["dice_adapted"]])
    print_table(
        f"propagation from the mask and FATE-SAM, plain vs adapted ({config.steps} steps), bundled reference model "
        f"(128 px, zoom 2), {'cuda' if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} threads; "
        f"the adapted copy holds {copy_mb:.0f} MB",
        ["task", "case", "labels", "plain s", "adapted s", "adapted/plain", "s/step", "Dice plain", "Dice adapted"],
        rows,
    )
    write_json("adapt", {"steps": config.steps, "copy_mb": copy_mb, "runs": records})


if __name__ == "__main__":
    main()
