"""The ultrasound fine-tuning study (medsam2kit.study): the grid, its configs, the statistics and
verdicts, the report, and ``medsam2kit study --quick`` end to end on the shared ultrasound."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medsam2kit._data import shared_data_dir
from medsam2kit.errors import ConfigError
from medsam2kit.reference import split_of
from medsam2kit.study import (
    DEFAULT_LEVELS,
    METRICS,
    QUICK_PLAN,
    Cell,
    CellResult,
    StudyPlan,
    cell_config,
    judge_claims,
    level_stats,
    write_report,
)
from medsam2kit.train.config import plan_stages

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="../shared/data (carotid_us, hc18_fetal_us) is absent")

_FACTORS = [f.name for f in dataclasses.fields(Cell) if f.name != "seed"]


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_plan_cells_vary_one_factor_at_a_time(data: st.DataObject) -> None:
    levels = tuple((f, tuple(data.draw(st.lists(st.sampled_from(v), min_size=1, max_size=len(v), unique=True))))
                   for f, v in data.draw(st.lists(st.sampled_from(DEFAULT_LEVELS), unique=True, max_size=6)))
    seeds = tuple(data.draw(st.lists(st.integers(0, 9), min_size=1, max_size=3, unique=True)))
    plan = StudyPlan(levels=levels, seeds=seeds)
    cells = plan.cells()
    base = plan.base
    expected = {base.key} | {dataclasses.replace(base, **{f: v}).key for f, vs in levels for v in vs}
    assert len(cells) == len(expected) * len(seeds) and len({c.name for c in cells}) == len(cells)
    assert {c.key for c in cells} == expected
    for c in cells:
        assert sum(getattr(c, f) != getattr(base, f) for f in _FACTORS) <= 1
    assert [c.seed for c in cells] == sorted((c.seed for c in cells), key=seeds.index)  # whole seeds first


def test_plan_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="unknown factor 'depth'"):
        StudyPlan(levels=(("depth", (1,)),))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="seeds"):
        StudyPlan(seeds=())
    with pytest.raises(ConfigError, match="steps"):
        StudyPlan(steps=0)
    with pytest.raises(ConfigError, match="no value"):
        StudyPlan(levels=(("lr", ()),))


def _result(cell: Cell, **metrics: float) -> CellResult:
    full = {m: metrics.get(m, 0.5) for m in METRICS}
    return CellResult(cell, True, full, {}, ("a",), {"steps": 1})


def test_level_stats_match_numpy_and_claims_follow_the_seed_spread() -> None:
    plan = StudyPlan(levels=(("fraction", (0.25, 1.0)), ("clip_length", (1, 8)), ("paradigm", ("task_specific", "joint")),
                             ("init", ("reference-phantoms", "reference"))))
    rng = np.random.default_rng(0)
    base_scores = 0.6 + 0.01 * rng.standard_normal(3)
    results = []
    for s, b in zip((0, 1, 2), base_scores):
        base = dataclasses.replace(plan.base, seed=s)
        results.append(_result(base, carotid_dice=b, carotid_jf=b - 0.2, fetal_box_dice=0.3))
        results.append(_result(dataclasses.replace(base, fraction=0.25), carotid_dice=b - 0.3))  # data helps: clear
        results.append(_result(dataclasses.replace(base, clip_length=1), carotid_jf=b - 0.2 + 0.005 * (s - 1)))  # same
        results.append(_result(dataclasses.replace(base, paradigm="joint"), carotid_dice=b, fetal_box_dice=0.6))
        results.append(_result(dataclasses.replace(base, init="reference-phantoms"), carotid_dice=b - 0.05))
    stats = level_stats(results, plan)
    frac = {s.level: s for s in stats["fraction"]}
    assert frac[0.25].n == 3 and frac[1.0].mean["carotid_dice"] == pytest.approx(base_scores.mean())
    assert frac[1.0].std["carotid_dice"] == pytest.approx(np.std(base_scores, ddof=1))
    assert frac[1.0].se("carotid_dice") == pytest.approx(np.std(base_scores, ddof=1) / math.sqrt(3))
    verdicts = {c.claim.split(" (")[0]: c.verdict for c in judge_claims(stats)}
    assert verdicts["More training data helps"] == "supports"
    assert verdicts["Temporal context helps"] == "cannot resolve"  # a difference within the seed spread
    assert verdicts["Data scale matters more than initialisation"] == "supports"  # 0.30 vs 0.05
    assert verdicts["Joint training is a good compromise"] == "supports"
    assert verdicts["Ultrasound-specific augmentations beat generic ones"] == "cannot resolve"  # not run
    # the other way round: less data better -> contradicts; one seed -> nothing can be resolved
    flipped = [dataclasses.replace(r, metrics={**r.metrics, "carotid_dice": 1 - r.metrics["carotid_dice"]})
               if r.cell.fraction == 0.25 else r for r in results]
    assert {c.claim.split(" (")[0]: c.verdict for c in judge_claims(level_stats(flipped, plan))}[
        "More training data helps"] == "contradicts"
    one_seed = [r for r in results if r.cell.seed == 0]
    assert {c.verdict for c in judge_claims(level_stats(one_seed, plan))} == {"cannot resolve"}


def test_write_report_writes_every_file(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plan = StudyPlan(levels=(("lr", (5e-5, 3e-4)),), seeds=(0, 1))
    results = [CellResult(dataclasses.replace(plan.base, seed=0), False, {m: 0.3 for m in METRICS}, {}, (), plan.settings)]
    results += [_result(c, carotid_dice=0.4 + 0.1 * c.seed) for c in plan.cells()]
    files = write_report(tmp_path, results, plan)
    assert sorted(p.name for p in files) == ["results.csv", "study.png", "summary.json", "summary.md"]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + len(results) and rows[1].startswith("zero-shot")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["levels"]["lr"][0]["mean"]["carotid_dice"] == pytest.approx(0.45)
    assert "| lr | seeds |" in (tmp_path / "summary.md").read_text()
    back = CellResult.from_dict(summary["results"][1])
    assert back == dataclasses.replace(results[1], per_recording=back.per_recording)


@needs_data
def test_cell_config_draws_training_recordings_and_the_paradigm_data() -> None:
    assert DATA is not None
    plan = StudyPlan(steps=7)
    cfg, recordings = cell_config(Cell(fraction=0.25, seed=3), plan, DATA, Path("unused"))
    assert len(recordings) == 2 and len(cfg.data.train) == 2 and not cfg.data.pool
    assert not any(split_of("carotid_us", Path(s.path)) == "held_out" for s in cfg.data.train)
    assert sum(s.weight for s in cfg.data.train) == pytest.approx(1.0)
    assert (cfg.optim.lr, cfg.optim.encoder_lr, cfg.schedule.steps, cfg.seed) == (3e-4, 3e-4, 7, 3)
    assert Path(cfg.model.checkpoint).name == "sam2.1_hiera_micro_real.pt"
    other = {cell_config(Cell(fraction=0.25, seed=s), plan, DATA, Path("x"))[1] for s in range(6)}
    assert len(other) > 1  # the subset follows the seed
    inter, _ = cell_config(Cell(paradigm="intermediate", init="reference-phantoms"), plan, DATA, Path("x"))
    assert [(s.name, s.steps) for s in plan_stages(inter)] == [("adapt", 7), ("task", 7)]
    assert len(inter.data.pool) == 240 and not any(split_of("hc18_fetal_us", Path(s.path)) == "held_out" for s in inter.data.pool)
    assert Path(inter.model.checkpoint).name == "sam2.1_hiera_micro_phantoms.pt"


@needs_data
@pytest.mark.slow
def test_study_quick_runs_end_to_end_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medsam2kit.cli import main

    out = tmp_path / "quick"
    # the real --quick (CI's smoke test), its cells in two processes of one torch thread (55 s, 79 s in one)
    assert main(["study", "--quick", "--out", str(out), "--data", str(DATA), "--workers", "2"]) == 0
    cells = sorted((out / "cells").glob("*/result.json"))
    assert len(cells) == len(QUICK_PLAN.cells()) == 3
    for path in cells:
        res = json.loads(path.read_text())
        per = res["per_recording"]
        assert len(per) == 3 and res["trained"]
        for prompt in ("mask", "box", "point"):
            assert res["metrics"][f"carotid_{prompt}_dice"] == pytest.approx(np.mean([per[r][prompt]["dice"] for r in per]))
        assert all(1 <= per[r]["point"]["clicks"] <= 4 for r in per)
        assert not list(path.parent.rglob("*.pt"))  # model files removed, records kept
        assert list(path.parent.rglob("metrics.jsonl"))
    zero = json.loads((out / "zero_shot" / "reference" / "result.json").read_text())
    assert not zero["trained"] and 0 <= zero["metrics"]["fetal_box_dice"] <= 1
    for name in ("results.csv", "summary.md", "summary.json", "study.png"):
        assert (out / name).is_file(), name
    assert "The paper's claims" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert main(["study", "--quick", "--out", str(out), "--data", str(DATA), "-q"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps  # finished cells reused, not retrained
    assert main(["study", "--quick", "--out", str(out), "--steps", "4", "--data", str(DATA), "-q"]) == 1
    err = capsys.readouterr().err
    assert "other settings" in err and "--overwrite" in err and err.count("\n") == 1


def test_study_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medsam2kit.cli import main

    assert main(["study", "--quick", "--out", str(tmp_path / "s"), "--data", str(tmp_path / "none")]) == 1
    assert "--data" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["study", "--quick", "--out", str(tmp_path / "s"), "--data", str(tmp_path / "empty")]) == 1
    assert "carotid_us" in capsys.readouterr().err
    if DATA is not None:
        assert main(["study", "--quick", "--out", str(tmp_path / "s"), "--data", str(DATA), "--workers", "0"]) == 1
        assert "workers" in capsys.readouterr().err
        (tmp_path / "file").write_text("x")
        assert main(["study", "--quick", "--out", str(tmp_path / "file"), "--data", str(DATA)]) == 1
        assert "is a file" in capsys.readouterr().err


@needs_data
@pytest.mark.slow
def test_a_newcomers_finetune_of_the_bundled_model_moves_held_out_dice(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``finetune`` with no optimiser keys on the bundled model (the model's defaults, chosen by the
    study) raises held-out carotid Dice within 80 steps (sam2's rate, the old default, left it at
    0.298 from 0.301 in 40 steps with older weights: docs/train.md; measured now 0.338 -> 0.460 in
    80 steps, 0.338 -> 0.344 in 40)."""
    import torch

    from medsam2kit.cli import main
    from medsam2kit.predictor import build_model
    from medsam2kit.reference import reference_checkpoint
    from medsam2kit.train.config import DatasetSpec
    from medsam2kit.train.data import load_videos
    from medsam2kit.train.loop import evaluate

    assert DATA is not None
    recordings = sorted((DATA / "carotid_us").glob("*.npz"))
    train = [p for p in recordings if split_of("carotid_us", p) != "held_out"]
    val = [p for p in recordings if split_of("carotid_us", p) == "held_out"]
    lines = ["data:", "  train:"] + [f"    - {{kind: cine, path: '{p}'}}" for p in train]
    lines += ["  val:"] + [f"    - {{kind: cine, path: '{p}'}}" for p in val]
    lines += ["  batch_size: 2", "  val_max_frames: 30", "prompts: {frames_to_correct: 1, correction_clicks: 2}",
              "schedule: {steps: 80, steps_per_epoch: 80}"]
    (tmp_path / "run.yaml").write_text("\n".join(lines) + "\n")
    assert main(["finetune", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "new"), "-q"]) == 0
    tuned = json.loads((tmp_path / "new" / "metrics.jsonl").read_text().splitlines()[-1])["val_dice"]
    videos = [v for p in val for v in load_videos(DatasetSpec(kind="cine", path=str(p)), image_size=128)]
    untuned = evaluate(build_model("sam2.1_hiera_micro", reference_checkpoint(), device="cpu"), videos,
                       device=torch.device("cpu"), max_frames=30)["val_dice"]
    print(f"held-out carotid Dice: untuned {untuned:.3f}, tuned with the model's defaults {tuned:.3f}")
    assert tuned >= untuned + 0.02, (untuned, tuned)
