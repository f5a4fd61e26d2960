"""Bad inputs fed to the API and to every subcommand: one named error, one line, no partial output.

Unwritable outputs are made portably (the tests also run as root, which ignores file
permissions): a path under a regular file, a file name longer than the file system allows, or a
write that fails on purpose (monkeypatched). Malicious files (header bombs, malformed banks,
coarse configs asking for a million channels) are written small, here.
"""

from __future__ import annotations

import datetime
import gzip
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medsam2kit._files import atomic_write, check_writable, clean_stale_temporaries, load_torch, temp_path
from medsam2kit.cli import main
from medsam2kit.coarse import CoarseConfig, CoarseSegmenter
from medsam2kit.errors import (
    CheckpointError,
    FileFormatError,
    FileTooLargeError,
    GeometryError,
    GeometryWarning,
    MedSAM2KitError,
    OutputError,
    OutputExistsError,
)
from medsam2kit.fewshot import SupportBank, SupportSlice
from medsam2kit.io import load_volume, save_mask
from medsam2kit.volume import Volume

LONG = "x" * 300  # longer than any file system's name limit (255 bytes)


def _image(shape: tuple[int, int, int] = (4, 8, 8)) -> Volume:
    arr = np.zeros(shape, np.float32)
    arr[1:3, 2:6, 2:6] = 1.0
    return Volume(arr, np.diag([2.0, 1.0, 1.0, 1.0]))


def _write_case(folder: Path, name: str = "c1") -> tuple[Path, Path]:
    image = _image()
    from medsam2kit.io import save_volume

    img = save_volume(image, folder / f"{name}_img.nii.gz")
    lab = save_mask(image.array > 0, image, folder / f"{name}_label.nii.gz")
    return img, lab


def _under_a_file(tmp_path: Path, name: str) -> Path:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    return blocker / name


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b[" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if "medsam2kit-tmp-" in p.name]


# --------------------------------------------------------------------------------------------
# outputs that cannot be written: the API
# --------------------------------------------------------------------------------------------


def test_save_mask_unwritable_is_a_named_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image()
    with pytest.raises(OutputError, match="cannot write .*" + LONG[:20]):
        save_mask(image.array > 0, image, tmp_path / f"{LONG}.nii.gz")
    _no_temporaries(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"path: cannot write .*m\.nii\.gz: Permission denied") as info:
        save_mask(image.array > 0, image, tmp_path / "m.nii.gz")
    assert isinstance(info.value, PermissionError | OSError)
    _no_temporaries(tmp_path)
    assert not (tmp_path / "m.nii.gz").exists()


def test_save_mask_under_a_file_is_a_named_error(tmp_path: Path) -> None:
    image = _image()
    with pytest.raises(MedSAM2KitError, match="file.txt"):
        save_mask(image.array > 0, image, _under_a_file(tmp_path, "m.nii.gz"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        image = _image()
        with pytest.raises(OutputError, match="Permission denied"):
            save_mask(image.array > 0, image, ro / "m.nii.gz")
        with pytest.raises(OutputError, match="Permission denied"):
            check_writable(ro / "m.nii.gz", overwrite=False)
    finally:
        ro.chmod(0o700)


def _tiny_bank() -> SupportBank:
    return SupportBank(
        slices=[SupportSlice(0, 1, 0.5, (1,))],
        descriptors=[torch.zeros(1, 2, 4, 4)],
        memories={1: {"rows": torch.tensor([0]), "maskmem_features": torch.zeros(1, 4, 2, 2),
                      "obj_ptr": torch.zeros(1, 8), "object_score_logits": torch.zeros(1, 1),
                      "pred_masks": torch.zeros(1, 1, 4, 4)}},
        maskmem_pos_enc=[torch.zeros(1, 4, 2, 2)],
        image_size=16,
        slice_direction=np.array([0.0, 0.0, 1.0]),
        fingerprint=1.0,
    )


def test_bank_and_coarse_save_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bank = _tiny_bank()
    with pytest.raises(OutputError, match="cannot write"):
        bank.save(tmp_path / f"{LONG}.pt")
    seg = CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1))
    img = np.zeros((2, 8, 8), np.float32)
    seg.fit([img], [img > 0], steps=1)
    with pytest.raises(OutputError, match="cannot write"):
        seg.save(tmp_path / f"{LONG}.pt")

    def torch_refuses(obj: object, f: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:747] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", torch_refuses)
    with pytest.raises(OutputError, match=r"bank\.pt: .*PytorchStreamWriter"):
        bank.save(tmp_path / "bank.pt")
    with pytest.raises(OutputError, match=r"coarse\.pt"):
        seg.save(tmp_path / "coarse.pt")
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------
# outputs that cannot be written: every subcommand, before the work
# --------------------------------------------------------------------------------------------


def test_segment_unwritable_out_fails_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, _ = _write_case(tmp_path)
    missing_coarse = tmp_path / "never_read.pt"  # read only after the output check
    assert main(["segment", "--input", str(img), "--coarse", str(missing_coarse),
                 "--out", str(tmp_path / f"{LONG}.nii.gz")]) == 1
    _one_line_error(capsys, "--out", "longer than")
    out = _under_a_file(tmp_path, "masks")
    assert main(["segment", "--input", str(tmp_path), "--coarse", str(missing_coarse), "--out", str(out)]) == 1
    _one_line_error(capsys, str(out), "file.txt")
    assert main(["segment", "--input", str(img), "--coarse", str(missing_coarse),
                 "--out", str(_under_a_file(tmp_path, "m.nii.gz"))]) == 1
    _one_line_error(capsys, "file.txt")


def test_fewshot_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, _ = _write_case(tmp_path)
    never = str(tmp_path / "never_read_bank.pt")
    assert main(["fewshot", "--bank", never, "--query", str(img), "--out", str(tmp_path / f"{LONG}.nii.gz")]) == 1
    _one_line_error(capsys, "--out", "longer than")
    out = _under_a_file(tmp_path, "masks")
    assert main(["fewshot", "--bank", never, "--query", str(tmp_path), "--out", str(out)]) == 1
    _one_line_error(capsys, str(out))
    assert main(["fewshot", "--support", str(img), str(img), "--query", str(img),
                 "--out", str(tmp_path / "q.nii.gz"), "--save-bank", str(_under_a_file(tmp_path, "b.pt"))]) == 1
    _one_line_error(capsys, "--save-bank", "file.txt")


def test_evaluate_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lab = _write_case(tmp_path)
    out = _under_a_file(tmp_path, "eval")
    assert main(["evaluate", str(lab), str(lab), "--out", str(out)]) == 1
    _one_line_error(capsys, str(out), "file.txt")
    assert main(["evaluate", str(lab), str(lab), "--out", str(tmp_path / "file.txt")]) == 1
    _one_line_error(capsys, "--out", "file.txt")


def test_demo_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _under_a_file(tmp_path, "demo")
    assert main(["demo", "--out", str(out), "--no-data"]) == 1
    _one_line_error(capsys, str(out))


def _finetune_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  train: [{kind: synthetic, count: 1, frames: 4}]\nschedule: {steps: 1}\ndevice: cpu\n"
                   "log: {plot: false, progress: false}\n")
    return cfg


def test_finetune_unwritable_or_existing_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _finetune_config(tmp_path)
    out = _under_a_file(tmp_path, "run")
    assert main(["finetune", str(cfg), "--out", str(out), "-q"]) == 1
    _one_line_error(capsys, "--out", "file.txt")
    assert main(["finetune", str(cfg), "--out", str(tmp_path / "file.txt"), "-q"]) == 1  # was FileExistsError
    _one_line_error(capsys, "--out", "file.txt")
    done = tmp_path / "done"
    done.mkdir()
    (done / "model_final.pt").write_bytes(b"earlier run")
    assert main(["finetune", str(cfg), "--out", str(done), "-q"]) == 1
    _one_line_error(capsys, "model_final.pt", "--overwrite")
    assert (done / "model_final.pt").read_bytes() == b"earlier run"


# --------------------------------------------------------------------------------------------
# existing outputs are refused unless --overwrite
# --------------------------------------------------------------------------------------------


def test_existing_outputs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, lab = _write_case(tmp_path)
    existing = tmp_path / "old_mask.nii.gz"
    existing.write_bytes(b"keep me")
    assert main(["segment", "--input", str(img), "--coarse", "never.pt", "--out", str(existing)]) == 1
    _one_line_error(capsys, str(existing), "--overwrite")
    assert main(["fewshot", "--bank", "never.pt", "--query", str(img), "--out", str(existing)]) == 1
    _one_line_error(capsys, str(existing), "--overwrite")
    assert existing.read_bytes() == b"keep me"
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "summary.json").write_text("{}")
    assert main(["demo", "--out", str(demo), "--no-data"]) == 1
    _one_line_error(capsys, "summary.json", "--overwrite")

    out = tmp_path / "eval"
    assert main(["evaluate", str(lab), str(lab), "--out", str(out), "--no-figures", "-q"]) == 0
    first = (out / "per_case.csv").read_text()
    assert main(["evaluate", str(lab), str(lab), "--out", str(out), "--no-figures", "-q"]) == 1
    _one_line_error(capsys, "per_case.csv", "--overwrite")
    assert main(["evaluate", str(lab), str(lab), "--out", str(out), "--no-figures", "-q", "--overwrite"]) == 0
    assert (out / "per_case.csv").read_text() == first
    _no_temporaries(out)


def test_overwrite_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("segment", "fewshot", "evaluate", "demo", "finetune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--overwrite" in capsys.readouterr().out, command


def test_check_writable(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_text("x")
    with pytest.raises(OutputExistsError, match=r"a\.nii\.gz already exists; pass overwrite=True") as info:
        check_writable(tmp_path / "a.nii.gz", overwrite=False)
    assert isinstance(info.value, FileExistsError)
    assert check_writable(tmp_path / "a.nii.gz", overwrite=True) == tmp_path / "a.nii.gz"
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="expected a folder"):
        check_writable(tmp_path / "a.nii.gz", overwrite=True, folder=True)
    assert check_writable(tmp_path / "new" / "deeper", overwrite=False, folder=True) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created by the check
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------
# temporary files of killed runs
# --------------------------------------------------------------------------------------------


def test_temporaries_are_recognisable_and_cleaned(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: never a live process
    old = time.time() - 3600
    stale = tmp_path / f".m.nii.gz.medsam2kit-tmp-{dead_pid}-0123456789ab.tmp.nii.gz"
    stale_dir = tmp_path / f".medsam2kit-tmp-{dead_pid}-0123456789ab"
    fresh = tmp_path / f".n.nii.gz.medsam2kit-tmp-{dead_pid}-ba9876543210.tmp.nii.gz"
    alive = tmp_path / f".o.pt.medsam2kit-tmp-{os.getpid()}-aaaaaaaaaaaa.tmp"
    other = tmp_path / ".m.nii.gz.tmp"  # not ours: never touched
    for p in (stale, fresh, alive, other):
        p.write_text("partial")
    stale_dir.mkdir()
    (stale_dir / "per_case.csv").write_text("partial")
    for p in (stale, stale_dir, alive, other):
        os.utime(p, (old, old))
    assert temp_path(tmp_path / "m.nii.gz", suffix=".tmp.nii.gz").name.startswith(".m.nii.gz.medsam2kit-tmp-")
    check_writable(tmp_path / "m.nii.gz", overwrite=False)  # the next run into the folder cleans
    assert not stale.exists() and not stale_dir.exists()
    assert fresh.exists() and alive.exists() and other.exists()
    assert clean_stale_temporaries(tmp_path, min_age_s=0.0) == [fresh]
    assert alive.exists() and other.exists()


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise ValueError("writer failed")

    with pytest.raises(ValueError, match="writer failed"):
        atomic_write(tmp_path / "a.txt", boom)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# no partial output
# --------------------------------------------------------------------------------------------


def test_evaluate_with_a_truncated_image_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, lab = _write_case(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    data = img.read_bytes()
    (images / img.name).write_bytes(data[: len(data) // 2])
    out = tmp_path / "eval"
    assert main(["evaluate", str(lab), str(lab), "--out", str(out), "--images", str(images)]) == 1
    _one_line_error(capsys, img.name)
    assert not out.exists() or list(out.iterdir()) == []


def test_evaluate_failing_late_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medsam2kit.evaluate as ev

    _, lab = _write_case(tmp_path)

    def fail_png(*args: object, **kwargs: object) -> Path:
        raise OutputError("figures: disk full")

    monkeypatch.setattr(ev, "save_png", fail_png)
    out = tmp_path / "eval"
    with pytest.raises(OutputError):
        ev.evaluate(lab, lab, out)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OutputError):
        ev.evaluate(lab, lab, out)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# malformed support banks
# --------------------------------------------------------------------------------------------


def _bank_payload() -> dict[str, object]:
    bank = _tiny_bank()
    return {"format": 1, "slices": [[0, 1, 0.5, [1]]], "descriptors": bank.descriptors,
            "memories": {"1": bank.memories[1]}, "maskmem_pos_enc": bank.maskmem_pos_enc, "image_size": 16,
            "slice_direction": torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), "fingerprint": 1.0}


@pytest.mark.parametrize("damage, needle", [
    (lambda p: p.pop("memories"), "missing keys"),
    (lambda p: p.update(slices=[[0, 1]]), r"slices\[0\]"),
    (lambda p: p.update(slices=[[0, 1, 0.5, 7]]), r"slices\[0\]"),
    (lambda p: p.update(descriptors=[torch.zeros(3, 2, 4, 4)]), "descriptors"),
    (lambda p: p.update(memories={"1": {"rows": torch.tensor([0])}}), r"memories\[1\]"),
    (lambda p: p["memories"]["1"].update(obj_ptr=torch.zeros(2, 8)), "obj_ptr"),  # type: ignore[index]
    (lambda p: p["memories"]["1"].update(rows=torch.tensor([5])), "rows"),  # type: ignore[index]
    (lambda p: p.update(slice_direction=torch.zeros(2)), "slice_direction"),
    (lambda p: p.update(image_size="big"), "image_size"),
])
def test_malformed_banks(tmp_path: Path, damage: object, needle: str) -> None:
    payload = _bank_payload()
    damage(payload)  # type: ignore[operator]
    path = tmp_path / "bank.pt"
    torch.save(payload, path)
    with pytest.raises(FileFormatError, match=f"{path}.*{needle}"):
        SupportBank.load(path)


def test_bank_descriptor_width_and_weights_name_the_file(tmp_path: Path) -> None:
    from medsam2kit.fewshot import SupportMemoryAssembler, model_fingerprint
    from medsam2kit.predictor import SAM2Predictor

    pred = SAM2Predictor.from_config("sam2.1_hiera_micro", device="cpu", image_size=64)
    model = pred.model
    payload = _bank_payload()
    mem = payload["memories"]["1"]  # type: ignore[index]
    mem["maskmem_features"] = torch.zeros(1, model.mem_dim, 4, 4)
    mem["obj_ptr"] = torch.zeros(1, model.hidden_dim)
    payload.update(image_size=64, fingerprint=model_fingerprint(model))
    path = tmp_path / "bank.pt"
    torch.save(payload, path)
    bank = SupportBank.load(path)
    assembler = SupportMemoryAssembler(pred, bank)
    with pytest.raises(CheckpointError, match=f"bank {path}: descriptors"):
        assembler.distances([torch.zeros(1, 32, 16, 16)])
    payload["fingerprint"] = 123.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"bank {path}: built with other model weights"):
        SupportMemoryAssembler(pred, SupportBank.load(path))
    mem["obj_ptr"] = torch.zeros(1, model.hidden_dim + 1)
    payload["fingerprint"] = model_fingerprint(model)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"bank {path}: .*obj_ptr"):
        SupportMemoryAssembler(pred, SupportBank.load(path))


# --------------------------------------------------------------------------------------------
# coarse model files
# --------------------------------------------------------------------------------------------


def _coarse_file(tmp_path: Path, **changes: object) -> Path:
    config = {"num_labels": 1, "context": 0, "image_size": 8, "base_channels": 2, "depth": 1,
              "normalization": "percentile", "percentiles": [0.5, 99.5], "axis": None, "norm": "batch"}
    payload: dict[str, object] = {"format_version": 1, "state_dict": {}}
    payload["config"] = changes.pop("config_text", None) or __import__("json").dumps({**config, **changes})
    path = tmp_path / "coarse.pt"
    torch.save(payload, path)
    return path


def test_coarse_config_bomb_is_refused_before_building(tmp_path: Path) -> None:
    path = _coarse_file(tmp_path, base_channels=1_000_000)
    start = time.perf_counter()
    with pytest.raises(FileFormatError, match=f"{path}: config base_channels = 1000000 exceeds"):
        CoarseSegmenter.load(path)
    with pytest.raises(FileFormatError, match="base_channels \\* 2 \\*\\* depth"):
        CoarseSegmenter.load(_coarse_file(tmp_path, base_channels=1024, depth=8, image_size=256))
    with pytest.raises(CheckpointError, match=f"{path} do not match the stored config: .*differ"):  # sane sizes, no weights: no allocation
        CoarseSegmenter.load(_coarse_file(tmp_path, base_channels=512, depth=5, image_size=256))
    assert time.perf_counter() - start < 10


def test_coarse_file_messages_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _coarse_file(tmp_path, config_text="[1, 2]")
    with pytest.raises(FileFormatError, match=f"{path}: config: expected a JSON object"):
        CoarseSegmenter.load(path)
    torch.save({"format_version": 99, "config": "{}", "state_dict": {}}, path)
    with pytest.raises(FileFormatError, match=f"{path}: format_version 99"):
        CoarseSegmenter.load(path)
    path = _coarse_file(tmp_path, num_labels=-1)
    with pytest.raises(FileFormatError, match=f"{path}: num_labels"):
        CoarseSegmenter.load(path)


# --------------------------------------------------------------------------------------------
# a refused checkpoint: one clean line
# --------------------------------------------------------------------------------------------


def test_pickled_objects_are_refused_in_one_clean_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"when": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(FileFormatError) as info:
        load_torch(path, what="checkpoint")
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message and "weights_only=False" not in message
    assert str(path) in message and "refused for safety" in message
    img, _ = _write_case(tmp_path)
    assert main(["segment", "--input", str(img), "--coarse", str(path), "--out", str(tmp_path / "m.nii.gz")]) == 1
    line = _one_line_error(capsys, str(path), "refused for safety")
    assert "weights_only" not in line


# --------------------------------------------------------------------------------------------
# geometry: a shifted label, no stored orientation
# --------------------------------------------------------------------------------------------


def test_support_bank_rejects_a_shifted_label() -> None:
    image = _image()
    shifted = np.diag([2.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    label = Volume((image.array > 0).astype(np.uint8), shifted)
    with pytest.raises(GeometryError, match="max difference 5"):
        SupportBank.build(None, [(image, label)])  # type: ignore[arg-type]  # refused before any encoding
    with pytest.raises(GeometryError, match="max difference 5"):  # the same check as the coarse fit
        CoarseSegmenter(CoarseConfig(image_size=8, base_channels=2, depth=1)).fit([image], [label], steps=1)


def _raw_nifti(path: Path, shape: tuple[int, ...], *, data: bytes = b"", zooms: float = 0.0,
               codes: int = 0, compress: bool = False) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["qform_code"] = codes
    header["sform_code"] = codes
    header["pixdim"][:] = zooms
    header["pixdim"][0] = 1.0
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_no_stored_geometry_warns_naming_the_file(tmp_path: Path) -> None:
    data = np.arange(60, dtype=np.int16).tobytes()
    path = _raw_nifti(tmp_path / "nogeom.nii", (3, 4, 5), data=data)
    with pytest.warns(GeometryWarning, match=r"nogeom\.nii: qform_code and sform_code are 0.*1 mm was assumed"):
        vol = load_volume(path)
    assert vol.spacing == (1.0, 1.0, 1.0)
    path = _raw_nifti(tmp_path / "zooms.nii", (3, 4, 5), data=data, zooms=2.0)
    with pytest.warns(GeometryWarning, match=r"zooms\.nii: qform_code and sform_code are 0") as record:
        load_volume(path)
    assert "not positive" not in str(record[0].message)


# --------------------------------------------------------------------------------------------
# header memory bombs
# --------------------------------------------------------------------------------------------


def test_gzip_header_bomb_fails_before_allocating(tmp_path: Path) -> None:
    path = _raw_nifti(tmp_path / "bomb.nii.gz", (2000, 2000, 2000), data=b"\0" * 3000, zooms=1.0, codes=1,
                      compress=True)
    assert path.stat().st_size < 4096
    with pytest.raises(FileTooLargeError, match=r"bomb\.nii\.gz: the header claims .*16000000000 bytes.*gzip"):
        load_volume(path)


def test_uncompressed_header_bomb_fails_before_allocating(tmp_path: Path) -> None:
    path = _raw_nifti(tmp_path / "bomb.nii", (1000, 1000, 600), data=b"\0" * 1000, zooms=1.0, codes=1)
    with pytest.raises(FileTooLargeError, match=r"bomb\.nii: the header claims .*1200000000 bytes.* only 1000 bytes"):
        load_volume(path)


def test_size_limit_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = _image()
    path = save_mask(image.array > 0, image, tmp_path / "ok.nii.gz")
    monkeypatch.setenv("MEDSAM2KIT_MAX_BYTES", "100")
    with pytest.raises(FileTooLargeError, match=r"ok\.nii\.gz: .*256 bytes.*limit of 100 bytes"):
        load_volume(path)
    monkeypatch.setenv("MEDSAM2KIT_MAX_BYTES", "1e6")
    assert load_volume(path).shape == image.shape


def test_a_file_that_is_not_a_torch_file_is_named_as_such(tmp_path: Path) -> None:
    import gzip

    from medsam2kit._files import load_torch

    fake = tmp_path / "image.nii.gz"
    fake.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + bytes(400)))
    with pytest.raises(FileFormatError, match="not a torch file") as info:
        load_torch(fake, what="coarse model file")
    assert "refused for safety" not in str(info.value) and str(fake) in str(info.value)
