from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam2kit.cli import main


def test_info_prints_versions_and_configs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setenv("MEDSAM2KIT_HOME", str(tmp_path))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "sam2 1.1.0" in out and "sam2.1_hiera_micro" in out and "device auto ->" in out
    assert "bundled reference weights: " in out and "sam2.1_hiera_micro_real.pt" in out
    assert f"model cache: {tmp_path / 'models'}" in out


@pytest.fixture
def offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty medsam2kit home and huggingface_hub cache, HF_HUB_OFFLINE=1; returns the model folder."""
    from huggingface_hub import constants

    monkeypatch.setenv("MEDSAM2KIT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "home" / "models"


def test_models_lists_the_entries(offline_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medsam2kit.models import list_models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    for entry in list_models():
        assert entry.name in rows and entry.config in rows[entry.name] and str(entry.image_size) in rows[entry.name]
    assert rows["medsam2_latest"].split()[1:4] == ["sam2.1_hiera_t", "512", "no"]
    assert str(offline_home / "MedSAM2_latest.pt") in rows["medsam2_latest"] and "CC-BY-SA-4.0" in rows["medsam2_latest"]
    assert rows["reference"].split()[1:4] == ["sam2.1_hiera_micro", "128", "yes"]
    assert main(["models", "--verbose"]) == 0
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt" in capsys.readouterr().out


def test_model_name_not_cached_fails_with_the_download_hint(offline_home: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-data", "--model", "sam2.1_hiera_large"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("medsam2kit demo: error: model 'sam2.1_hiera_large'")
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt" in err
    assert f"put it at {offline_home / 'sam2.1_hiera_large.pt'}" in err
    assert not out.exists()


def test_model_option_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "demo")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", out, "--model", "reference", "--config", "sam2.1_hiera_t"])
    assert exc.value.code == 2 and "--model conflicts with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", out, "--random-init", "--checkpoint", "x.pt"])
    assert exc.value.code == 2
    # --config alone would mean random weights: refused, saying how to ask for them
    assert main(["demo", "--out", out, "--config", "sam2.1_hiera_t"]) == 1
    assert "--random-init" in capsys.readouterr().err
    assert not Path(out).exists()


def test_finetune_model_option_sets_the_config_model() -> None:
    from medsam2kit.reference import reference_checkpoint
    from medsam2kit.train.cli import _model_changes
    from medsam2kit.train.config import TrainConfig

    changes = _model_changes("reference")
    assert changes == {"model.config": "sam2.1_hiera_micro", "model.checkpoint": str(reference_checkpoint()),
                       "model.image_size": 128}
    assert TrainConfig().replace(**changes).model.image_size == 128


def test_demo_writes_masks_overlays_and_a_dice_table(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-data", "--quiet", "--adapt-steps", "3"]) == 0
    case = out / "phantom_0"
    image = nib.load(case / "image.nii.gz")
    methods = ("propagation", "propagation_adapted", "propagation_box", "fewshot", "fewshot_vote", "coarse", "sam2med3d")
    for name in ("ground_truth", *methods):
        other = nib.load(case / f"{name}.nii.gz")
        assert other.shape == image.shape
        np.testing.assert_allclose(other.affine, image.affine, atol=1e-5)
        assert nib.aff2axcodes(other.affine) == nib.aff2axcodes(image.affine)
    assert all((case / f"overlay_{m}.png").stat().st_size > 1000 for m in methods)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == ["phantom_0"] and summary["model"].startswith("bundled model reference ")
    assert summary["volumes_model"] == "reference-volumes"  # the volumes' model, as the commands use it
    assert summary["volumes_mirror"] is True  # with its mirror averaging
    rows = (out / "dice_table.csv").read_text().splitlines()
    assert rows[0] == "task,case,label,method,dice"
    # labels 1, 2 x (fate-sam, vote, coarse, fused) + propagation x 6
    assert len(rows) - 1 == len(summary["rows"]) == 2 * (4 + 6)
    assert all(0.0 <= float(r.rsplit(",", 1)[1]) <= 1.0 for r in rows[1:])
    table = (out / "dice_table.md").read_text()
    for column in ("propagation (mask): sam2", "propagation (mask): sam2 adapted (3 steps)",
                   "propagation (mask): copy to labelled slices", "propagation (mask): sam2 on labelled slices",
                   "propagation (mask): sam2 adapted (3 steps) on labelled slices",
                   "propagation (box): sam2", "fewshot: fate-sam", "fewshot: registered supports (vote)",
                   "sam2med3d: coarse", "sam2med3d: fused"):
        assert column in table
    assert set(summary["mean_dice"]) == {"propagation (mask)/sam2", "propagation (mask)/sam2 adapted (3 steps)",
                                         "propagation (mask)/copy to labelled slices",
                                         "propagation (mask)/sam2 on labelled slices",
                                         "propagation (mask)/sam2 adapted (3 steps) on labelled slices",
                                         "propagation (box)/sam2", "fewshot/fate-sam",
                                         "fewshot/registered supports (vote)", "sam2med3d/coarse", "sam2med3d/fused"}


def test_demo_errors_exit_1_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--config", "no_such_config"]) == 1
    assert "no_such_config" in capsys.readouterr().err
    assert not out.exists()
    file_out = tmp_path / "file"
    file_out.write_text("x")
    assert main(["demo", "--out", str(file_out)]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--adapt-steps", "-1"]) == 1
    assert "--adapt-steps: expected a number of steps >= 0" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--jobs", "0"]) == 1
    assert "--jobs: expected a number of processes >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_an_interrupt_exits_130_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import medsam2kit.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_info", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "medsam2kit info: interrupted\n"


def test_help_and_usage_errors() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_fewshot_command_writes_a_label_map_on_the_query_grid(tmp_path: Path) -> None:
    from medsam2kit.io import load_label, save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    paths = []
    for seed in (1, 2):
        image, label = ellipsoid_phantom((6, 40, 36), rng=seed)
        save_volume(image, tmp_path / f"s{seed}.nii.gz")
        save_mask(label.array, image, tmp_path / f"s{seed}_label.nii.gz")
        paths += ["--support", str(tmp_path / f"s{seed}.nii.gz"), str(tmp_path / f"s{seed}_label.nii.gz")]
    query, _ = ellipsoid_phantom((7, 44, 40), (2.0, 0.9, 0.9), rng=3)
    save_volume(query, tmp_path / "q.nii.gz")
    out = tmp_path / "q_mask.nii.gz"
    bank = tmp_path / "bank.pt"
    import torch

    from medsam2kit.predictor import build_model

    ckpt = tmp_path / "micro.pt"
    torch.save({"model": build_model("sam2.1_hiera_micro", device="cpu").state_dict()}, ckpt)
    model = ["--config", "sam2.1_hiera_micro", "--checkpoint", str(ckpt)]
    args = ["fewshot", *paths, "--query", str(tmp_path / "q.nii.gz"), "--out", str(out),
            *model, "--save-bank", str(bank), "--quiet"]
    assert main(args) == 0
    from medsam2kit.io import load_volume

    q = load_volume(tmp_path / "q.nii.gz")
    assert load_label(out, like=q).shape == q.shape
    # reuse the bank; without supports
    out2 = tmp_path / "q_mask2.nii.gz"
    assert main(["fewshot", "--bank", str(bank), "--query", str(tmp_path / "q.nii.gz"), "--out", str(out2),
                 *model, "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(out2).dataobj))
    # adapted to the supports first: as the pipeline with adapt= on the same files
    from medsam2kit.adapt import AdaptConfig
    from medsam2kit.fewshot import FewShotPipeline
    from medsam2kit.predictor import SAM2Predictor
    from medsam2kit.register import RegistrationConfig

    out3 = tmp_path / "q_mask3.nii.gz"
    assert main(["fewshot", *paths, "--query", str(tmp_path / "q.nii.gz"), "--out", str(out3), *model,
                 "--adapt-steps", "2", "--quiet"]) == 0
    pairs = [(load_volume(tmp_path / f"s{seed}.nii.gz"), load_label(tmp_path / f"s{seed}_label.nii.gz",
                                                                     like=load_volume(tmp_path / f"s{seed}.nii.gz")))
             for seed in (1, 2)]
    pred = SAM2Predictor.from_config("sam2.1_hiera_micro", ckpt, device="cpu")
    expected = FewShotPipeline(pred, pairs, adapt=AdaptConfig(steps=2), align=RegistrationConfig())(q).array
    np.testing.assert_array_equal(load_label(out3, like=q).array, expected)  # aligned by default
    # --no-prior: aligned without the registered supports' prior, as the pipeline with prior=None
    out5 = tmp_path / "q_mask5.nii.gz"
    assert main(["fewshot", *paths, "--query", str(tmp_path / "q.nii.gz"), "--out", str(out5), *model,
                 "--adapt-steps", "0", "--no-prior", "--quiet"]) == 0
    np.testing.assert_array_equal(load_label(out5, like=q).array,
                                  FewShotPipeline(pred, pairs, align=RegistrationConfig(), prior=None)(q).array)
    # --no-align: one bank for every query, as the pipeline without align
    out4 = tmp_path / "q_mask4.nii.gz"
    assert main(["fewshot", *paths, "--query", str(tmp_path / "q.nii.gz"), "--out", str(out4), *model,
                 "--no-align", "--quiet"]) == 0
    np.testing.assert_array_equal(load_label(out4, like=q).array, load_label(out, like=q).array)


def test_fewshot_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fewshot", "--query", str(tmp_path / "q.nii.gz"), "--out", str(tmp_path / "m.nii.gz")]) == 1
    assert "--support/--bank" in capsys.readouterr().err
    (tmp_path / "q.nii.gz").write_bytes(b"")
    assert main(["fewshot", "--bank", "b.pt", "--query", str(tmp_path / "q.nii.gz"), "--out", str(tmp_path / "m.png")]) == 1
    assert "--out" in capsys.readouterr().err
    assert main(["fewshot", "--bank", "b.pt", "--query", str(tmp_path / "missing.nii.gz"),
                 "--out", str(tmp_path / "m.nii.gz")]) == 1
    assert "--query" in capsys.readouterr().err
    query = ["--query", str(tmp_path / "q.nii.gz"), "--out", str(tmp_path / "m.nii.gz")]
    assert main(["fewshot", "--bank", "b.pt", *query, "--adapt-steps", "5"]) == 1
    assert "--adapt-steps: adapting needs the support volumes" in capsys.readouterr().err
    support = ["--support", "s.nii.gz", "s_label.nii.gz"]
    assert main(["fewshot", *support, *query, "--adapt-steps", "5", "--save-bank", str(tmp_path / "b.pt")]) == 1
    assert "--save-bank: the bank of an adapted model" in capsys.readouterr().err
    assert main(["fewshot", *support, *query, "--adapt-steps", "-1"]) == 1
    assert "--adapt-steps: expected a number of steps >= 0" in capsys.readouterr().err
    assert main(["fewshot", "--bank", "b.pt", *query, "--align"]) == 1
    assert "--align: aligning registers the support volumes" in capsys.readouterr().err
    assert main(["fewshot", *support, *query, "--align", "--save-bank", str(tmp_path / "b.pt")]) == 1
    assert "--save-bank: aligned supports give each query its own bank" in capsys.readouterr().err
    assert main(["fewshot", *support, *query, "--top-k", "0"]) == 1
    assert "--top-k: expected >= 1" in capsys.readouterr().err
    assert main(["fewshot", "--bank", "b.pt", *query, "--prior"]) == 1
    assert "--prior: the supports' prior needs them registered onto each query" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists() and not (tmp_path / "b.pt").exists()


def test_fewshot_cohort_split_across_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from medsam2kit.io import save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom
    from medsam2kit.predictor import build_model

    image, label = ellipsoid_phantom((6, 40, 36), rng=1)
    save_volume(image, tmp_path / "s.nii.gz")
    save_mask(label.array, image, tmp_path / "s_label.nii.gz")
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for seed in (2, 3, 4):
        save_volume(ellipsoid_phantom((6, 40, 36), rng=seed)[0], cohort / f"case{seed}.nii.gz")
    save_mask(label.array, image, cohort / "case2_label.nii.gz")  # not a case
    ckpt = tmp_path / "m.pt"
    torch.save({"model": build_model("sam2.1_hiera_micro", device="cpu").state_dict()}, ckpt)
    base = ["fewshot", "--support", str(tmp_path / "s.nii.gz"), str(tmp_path / "s_label.nii.gz"),
            "--query", str(cohort), "--config", "sam2.1_hiera_micro", "--checkpoint", str(ckpt), "--quiet"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main([*base, "--out", str(tmp_path / f"out{rank}")]) == 0
    assert sorted(p.name for p in (tmp_path / "out0").iterdir()) == ["case2_labels.nii.gz", "case4_labels.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out1").iterdir()) == ["case3_labels.nii.gz"]


def test_segment_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
    from medsam2kit.io import load_label, load_volume, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    image, label = ellipsoid_phantom((8, 40, 36), rng=1)
    seg = CoarseSegmenter(CoarseConfig(num_labels=2, image_size=32, base_channels=4, depth=2))
    seg.fit([image], [label], steps=5, generator=torch.Generator().manual_seed(0))
    seg.save(tmp_path / "coarse.pt")
    save_volume(image, tmp_path / "img.nii.gz")
    out = tmp_path / "img_mask.nii.gz"
    assert main(["segment", "--input", str(tmp_path / "img.nii.gz"), "--coarse", str(tmp_path / "coarse.pt"),
                 "--out", str(out), "--k", "2"]) == 0
    vol = load_volume(tmp_path / "img.nii.gz")
    assert load_label(out, like=vol).shape == vol.shape
    # no model option: the bundled model for volumes, said in one line
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model:")]
    assert lines == ["model: bundled model reference-volumes (sam2.1_hiera_micro, 128 px; not for clinical use); "
                     "use --model for another"]
    assert main(["segment", "--input", str(tmp_path / "img.nii.gz"), "--coarse", str(tmp_path / "coarse.pt"),
                 "--out", str(out), "--k", "2", "--random-init", "--quiet", "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "warning: random weights (sam2.1_hiera_micro, --random-init)" in captured.err and not captured.out
    assert main(["segment", "--input", str(tmp_path / "nope.nii.gz"), "--coarse", str(tmp_path / "coarse.pt"),
                 "--out", str(out)]) == 1
    zoomed = tmp_path / "zoomed.nii.gz"
    assert main(["segment", "--input", str(tmp_path / "img.nii.gz"), "--coarse", str(tmp_path / "coarse.pt"),
                 "--out", str(zoomed), "--k", "2", "--zoom", "0.5", "--quiet"]) == 1
    assert "--zoom: expected a crop factor >= 1" in capsys.readouterr().err and not zoomed.exists()
    assert main(["segment", "--input", str(tmp_path / "img.nii.gz"), "--coarse", str(tmp_path / "coarse.pt"),
                 "--out", str(zoomed), "--k", "2", "--zoom", "1.5", "--quiet"]) == 0
    assert load_label(zoomed, like=vol).shape == vol.shape


def test_coarse_command_then_segment_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From the command line alone: fit a coarse network, segment a folder with it, and evaluate the
    outputs (<case>_labels.nii.gz) against the references (<case>_label.nii.gz) beside the images."""
    from medsam2kit.coarse import CoarseSegmenter
    from medsam2kit.io import load_label, load_volume, save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    data = tmp_path / "data"
    data.mkdir()
    for seed in (1, 2, 3):
        image, label = ellipsoid_phantom((6, 32, 28), rng=seed)
        save_volume(image, data / f"c{seed}_img.nii.gz")
        save_mask(label.array, image, data / f"c{seed}_label.nii.gz")
    coarse = tmp_path / "coarse.pt"
    train = ["--image", str(data / "c1_img.nii.gz"), str(data / "c1_label.nii.gz"),
             "--image", str(data / "c2_img.nii.gz"), str(data / "c2_label.nii.gz")]
    small = ["--steps", "3", "--size", "32", "--base-channels", "4", "--batch-size", "4"]
    assert main(["coarse", *train, "--out", str(coarse), *small]) == 0
    captured = capsys.readouterr()
    assert f"wrote {coarse} (labels [1, 2]; 3 steps" in captured.out
    assert "fitting the coarse network on 2 volume(s), labels [1, 2]" in captured.err and "3/3" in captured.err
    seg = CoarseSegmenter.load(coarse)
    assert seg.config.num_labels == 2 and seg.config.context == 1
    # refused without --overwrite; --labels keeps the label values; unknown labels named
    assert main(["coarse", *train, "--out", str(coarse), *small, "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["coarse", *train, "--out", str(coarse), *small, "--quiet", "--overwrite", "--labels", "2"]) == 0
    assert CoarseSegmenter.load(coarse).config.num_labels == 2
    assert not capsys.readouterr().err
    assert main(["coarse", *train, "--out", str(tmp_path / "x.pt"), *small, "--labels", "7"]) == 1
    assert "--labels: expected labels >= 1 present in the label maps (found [1, 2]), got [7]" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    # segment a folder of images and labels: only the images are cases, named <case>_labels.nii.gz
    assert main(["segment", "--input", str(data), "--coarse", str(coarse), "--out", str(tmp_path / "out"),
                 "--k", "1", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"c{s}_labels.nii.gz" for s in (1, 2, 3)]
    vol = load_volume(data / "c3_img.nii.gz")
    assert load_label(tmp_path / "out" / "c3_labels.nii.gz", like=vol).shape == vol.shape
    assert main(["evaluate", str(tmp_path / "out"), str(data), "--out", str(tmp_path / "eval"),
                 "--images", str(data)]) == 0
    assert "3 case(s)" in capsys.readouterr().out


def test_single_case_commands_report_their_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fewshot on one case showed no progress while it worked: one line per stage on stderr; --quiet silences."""
    from medsam2kit.io import save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    image, label = ellipsoid_phantom((5, 32, 32), rng=1)
    save_volume(image, tmp_path / "s_img.nii.gz")
    save_mask(label.array, image, tmp_path / "s_label.nii.gz")
    save_volume(ellipsoid_phantom((5, 32, 32), rng=2)[0], tmp_path / "q_img.nii.gz")
    args = ["fewshot", "--support", str(tmp_path / "s_img.nii.gz"), str(tmp_path / "s_label.nii.gz"),
            "--query", str(tmp_path / "q_img.nii.gz"), "--random-init"]
    assert main([*args, "--out", str(tmp_path / "q_labels.nii.gz")]) == 0
    err = capsys.readouterr().err
    for stage in ("reading the support", "segmenting "):
        assert f"medsam2kit fewshot: {stage}" in err
    assert "registering 1 support(s) onto it" in err
    assert main([*args, "--out", str(tmp_path / "q3_labels.nii.gz"), "--no-align"]) == 0
    err = capsys.readouterr().err
    for stage in ("reading the support", "building the support bank", "support bank: ", "segmenting "):
        assert f"medsam2kit fewshot: {stage}" in err
    assert main([*args, "--out", str(tmp_path / "q2_labels.nii.gz"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "medsam2kit fewshot: " not in err.replace("medsam2kit fewshot: warning", "")


def test_fewshot_adapts_a_bundled_model_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """As propagate: with a bundled model and the supports at hand, FATE-SAM adapts a copy to them
    first (the model card's held-out gain: 0.131 -> 0.389 registered); a bank given or saved, an
    explicit --adapt-steps or another model keep what they say."""
    import medsam2kit.cli as cli
    from medsam2kit.io import save_mask, save_volume
    from medsam2kit.phantoms import ellipsoid_phantom

    monkeypatch.setattr(cli, "BUNDLED_ADAPT_STEPS", 2)  # the path, not the 200 steps' cost
    image, label = ellipsoid_phantom((5, 32, 32), rng=1)
    save_volume(image, tmp_path / "s_img.nii.gz")
    save_mask(label.array, image, tmp_path / "s_label.nii.gz")
    save_volume(ellipsoid_phantom((5, 32, 32), rng=2)[0], tmp_path / "q_img.nii.gz")
    base = ["fewshot", "--support", str(tmp_path / "s_img.nii.gz"), str(tmp_path / "s_label.nii.gz"),
            "--query", str(tmp_path / "q_img.nii.gz")]
    runs = [([], "adapting a copy of the model to the supports (2 steps; --adapt-steps 0 for none)"),
            (["--adapt-steps", "0"], None), (["--save-bank", str(tmp_path / "b.pt")], None), (["--random-init"], None)]
    for n, (extra, line) in enumerate(runs):
        assert main([*base, "--out", str(tmp_path / f"q{n}_labels.nii.gz"), *extra]) == 0
        captured = capsys.readouterr()
        err = captured.err
        if "--random-init" not in extra:  # the bundled model of volumes, said in one line
            assert captured.out.startswith("model: bundled model reference-volumes "), captured.out
        assert (line in err) if line else ("adapting a copy" not in err), (extra, err)
