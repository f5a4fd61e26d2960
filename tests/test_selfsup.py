"""Self-supervised training objects (supervoxels of real volumes, pasted shapes, moving images) and the real split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medsam2kit.errors import InvalidInputError
from medsam2kit.train.config import DatasetSpec
from medsam2kit.train.data import load_videos
from medsam2kit.train.selfsup import (PASTE_CONTRAST, TISSUE, moving_clip, moving_video, pasted_labels, region_axes,
                                      region_labels)


def _blobs(seed: int, shape: tuple[int, int, int] = (16, 48, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = ndimage.gaussian_filter(rng.normal(size=shape), 2.0) * 10
    return (vol + rng.normal(scale=0.3, size=shape)).astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), axis=st.integers(0, 2))
def test_region_objects_span_slices_and_have_the_drawn_size(seed: int, axis: int) -> None:
    vol = _blobs(seed)
    min_slices, area_range = 3, (0.01, 0.12)
    lab = region_labels(vol, (1.0, 1.0, 1.0), axis=axis, rng=np.random.default_rng(seed), min_slices=min_slices,
                        area_range=area_range)
    assert lab.shape == vol.shape and lab.dtype == np.uint8
    plane = np.prod([n for a, n in enumerate(vol.shape) if a != axis])
    values = [v for v in np.unique(lab) if v != 0]
    assert values == list(range(1, len(values) + 1)) and len(values) <= 8
    for v in values:
        obj = np.moveaxis(lab == v, axis, 0)
        per_slice = obj.reshape(obj.shape[0], -1).sum(1)
        extent = int((per_slice > 0).sum())
        assert extent >= min_slices
        median_area = obj.sum() / extent / plane  # the selection rule, recomputed by brute force
        assert area_range[0] / 2 <= median_area <= area_range[1] * 2


def test_region_labels_are_reproducible_and_skip_flat_background() -> None:
    vol = _blobs(3)
    vol[:, :, :16] = vol.min()  # a flat, dark band: never an object
    a = region_labels(vol, (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(7))
    b = region_labels(vol, (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(7))
    assert np.array_equal(a, b) and a.max() >= 1
    assert not a[:, :, :14].any()


def test_region_labels_reject_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="volume"):
        region_labels(np.zeros((4, 4)), (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="axis"):
        region_labels(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0), axis=3, rng=np.random.default_rng(0))


def test_region_axes_follow_the_voxel_shape() -> None:
    assert region_axes((512, 512, 16), (0.7, 0.7, 5.0)) == [2]
    assert region_axes((30, 40, 2), (1.0, 1.0, 1.0)) == [0, 1]
    assert region_axes((40, 40, 40), (1.0, 2.0, 2.0)) == [0, 1, 2]  # ratio 2 <= 2.5 everywhere
    assert region_axes((40, 40, 40), (1.0, 3.0, 3.0)) == [0]


def _windowed(vol: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(vol, [0.5, 99.5])
    return np.clip((vol - lo) / (hi - lo), 0.0, 1.0)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), axis=st.integers(0, 2))
def test_pasted_shapes_change_the_volume_only_around_them(seed: int, axis: int) -> None:
    vol = _blobs(seed, (14, 40, 44))
    min_slices, area_range = 3, (0.02, 0.1)
    img, lab = pasted_labels(vol, (1.0, 1.5, 1.0), axis=axis, rng=np.random.default_rng(seed), min_slices=min_slices,
                             area_range=area_range)
    assert img.shape == lab.shape == vol.shape and img.dtype == np.float32 and lab.dtype == np.uint8
    assert 0.0 <= img.min() and img.max() <= 1.0
    values = [int(v) for v in np.unique(lab) if v != 0]
    assert values == list(range(1, len(values) + 1)) and len(values) <= 3
    # beyond the blend at their border (two voxels), the windowed volume is untouched
    near = ndimage.binary_dilation(lab > 0, np.ones((3, 3, 3), bool), iterations=3)
    assert np.allclose(img[~near], _windowed(vol)[~near], rtol=0.0, atol=1e-6)
    plane = np.prod([n for a, n in enumerate(vol.shape) if a != axis])
    for v in values:
        obj = np.moveaxis(lab == v, axis, 0)
        per_slice = obj.reshape(obj.shape[0], -1).sum(1)
        assert int((per_slice > 0).sum()) >= min_slices
        assert per_slice.max() / plane <= area_range[1] * 2  # the drawn size, irregular border and all


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_a_pasted_shape_differs_from_its_surroundings_by_the_drawn_contrast(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vol = (0.5 + 0.05 * rng.normal(size=(12, 48, 48))).astype(np.float32)  # mid-grey tissue, real-ish texture
    vol[0, 0, 0], vol[-1, -1, -1] = 0.0, 1.0  # the window's ends, so windowing keeps the grey level
    img, lab = pasted_labels(vol, (2.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(seed), max_objects=1)
    shape = lab == 1
    core = ndimage.binary_erosion(shape, iterations=2)
    ring = ndimage.binary_dilation(shape, iterations=4) & ~ndimage.binary_dilation(shape, iterations=2)
    if core.sum() < 20:
        return  # a sliver: no core to measure
    contrast = abs(float(img[core].mean()) - float(img[ring].mean()))
    noise = 3 * float(img[core].std()) / np.sqrt(core.sum())  # the core's mean, of real-ish texture, is a sample
    assert PASTE_CONTRAST[0] - 0.02 - noise <= contrast <= PASTE_CONTRAST[1] + 0.02 + noise


def test_pasted_shapes_sit_in_the_body_and_are_reproducible() -> None:
    vol = _blobs(5, (12, 40, 40))
    vol -= vol.min()
    vol[:, :, :20] = 0.0  # air on the left half
    a_img, a = pasted_labels(vol, (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(3))
    b_img, b = pasted_labels(vol, (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(3))
    assert np.array_equal(a, b) and np.array_equal(a_img, b_img) and a.max() >= 1
    body = ndimage.uniform_filter(_windowed(vol), 3) > TISSUE
    for v in range(1, int(a.max()) + 1):
        assert (body & (a == v)).any()
    img, none = pasted_labels(np.zeros((8, 20, 20), np.float32), (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(0))
    assert not none.any() and not img.any()  # all air: nothing to paste into


def test_pasted_labels_reject_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="volume"):
        pasted_labels(np.zeros((4, 4)), (1.0, 1.0, 1.0), axis=0, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="axis"):
        pasted_labels(np.zeros((4, 4, 4)), (1.0, 1.0), axis=0, rng=np.random.default_rng(0))


def test_moving_clip_without_motion_is_the_image() -> None:
    gen = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (32, 32), dtype=torch.uint8, generator=gen)
    masks = torch.rand(2, 32, 32, generator=gen) > 0.5
    frames, moved = moving_clip(frame, masks, 4, generator=gen, max_shift=0.0, max_angle=0.0, max_scale=0.0)
    assert torch.equal(frames, frame.expand(4, 32, 32)) and torch.equal(moved, masks.expand(4, 2, 32, 32))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_moving_clip_moves_mask_and_image_together(seed: int) -> None:
    frame = torch.zeros(64, 64, dtype=torch.uint8)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 20:40, 24:44] = True
    frame[masks[0]] = 200
    frames, moved = moving_clip(frame, masks, 6, generator=torch.Generator().manual_seed(seed))
    bright = frames > 100
    for t in range(6):
        inter = (bright[t] & moved[t, 0]).sum().item()
        union = (bright[t] | moved[t, 0]).sum().item()
        assert inter / union > 0.85
    assert not torch.equal(moved[0], moved[-1])  # it moved


def test_moving_video_needs_one_frame() -> None:
    vids = load_videos(DatasetSpec(kind="synthetic", count=1, frames=3), image_size=64)
    with pytest.raises(InvalidInputError, match="one frame"):
        moving_video(vids[0], 4, generator=torch.Generator())


def test_load_videos_regions_and_moving_images(tmp_path: Path) -> None:
    from PIL import Image

    from medsam2kit.io import save_volume
    from medsam2kit.volume import Volume

    save_volume(Volume(_blobs(1, (12, 40, 40)), np.diag([1.0, 1.0, 1.0, 1.0])), tmp_path / "v.nii.gz")
    vids = load_videos(DatasetSpec(kind="regions", path=str(tmp_path / "v.nii.gz"), count=2), image_size=64)
    assert len(vids) == 2 * 3  # two sequences per axis, three axes of a 1 mm isotropic volume
    assert all(v.masks.shape[1] == len(v.obj_ids) >= 1 and v.frames.shape[1:] == (64, 64) for v in vids)
    pasted = load_videos(DatasetSpec(kind="pasted", path=str(tmp_path / "v.nii.gz"), count=2, axis=0), image_size=64)
    assert len(pasted) == 2 and all(1 <= len(v.obj_ids) <= 3 for v in pasted)
    assert [v.name for v in pasted] == ["pasted:v.nii.gz:0:0", "pasted:v.nii.gz:0:1"]
    img = np.zeros((30, 50), np.uint8)
    img[10:20, 15:30] = 180
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray((img > 0).astype(np.uint8) * 255).save(tmp_path / "a_mask.png")
    moving = load_videos(DatasetSpec(kind="images", path=str(tmp_path / "a.png"), motion_frames=5), image_size=64)
    still = load_videos(DatasetSpec(kind="images", path=str(tmp_path / "a.png")), image_size=64)
    assert moving[0].num_frames == 5 and still[0].num_frames == 1
    assert bool(moving[0].present.all())


def test_zoomed_volume_videos_crop_around_each_label(tmp_path: Path) -> None:
    from medsam2kit.io import save_volume
    from medsam2kit.train.config import config_from_dict
    from medsam2kit.volume import Volume

    lab = np.zeros((6, 90, 80), np.uint8)
    lab[1:5, 10:20, 12:20] = 1  # 10 x 8 voxels: a crop of 2 x 10 = 20 voxels
    lab[2:4, 50:80, 30:70] = 2  # 30 x 40 voxels: a crop of 80 voxels (the slice's width)
    affine = np.diag([4.0, 1.0, 1.0, 1.0])
    img = np.random.default_rng(0).normal(size=lab.shape).astype(np.float32) + lab
    save_volume(Volume(img, affine), tmp_path / "v.nii.gz")
    save_volume(Volume(lab, affine), tmp_path / "l.nii.gz")
    spec = DatasetSpec(kind="volume", path=str(tmp_path / "v.nii.gz"), mask_path=str(tmp_path / "l.nii.gz"), zoom=(2.0,))
    vids = load_videos(spec, image_size=64)
    assert [v.obj_ids for v in vids] == [(1,), (2,)]
    # label 1: 10 x 8 voxels in a 20 x 20 crop -> 20 % of the frame; label 2: 30 x 40 in 80 x 80 -> 18.75 %
    for v, share in zip(vids, (10 * 8 / 400, 30 * 40 / 6400)):
        largest = int(v.masks.flatten(1).sum(1).argmax())
        assert abs(float(v.masks[largest].float().mean()) - share) < 0.02
    assert int(vids[0].present.sum()) == 4 and int(vids[1].present.sum()) == 2
    whole = load_videos(DatasetSpec(kind="volume", path=spec.path, mask_path=spec.mask_path), image_size=64)
    assert len(whole) == 1 and whole[0].obj_ids == (1, 2)
    with pytest.raises(Exception, match=r"zoom: only a 'volume' or 'images' dataset zooms"):
        config_from_dict({"data": {"train": [{"kind": "cine", "path": "x.npz", "zoom": [2.0]}]}})
    with pytest.raises(Exception, match=r"zoom: expected factors >= 1"):
        config_from_dict({"data": {"train": [{**{k: str(v) for k, v in (("kind", "volume"), ("path", spec.path),
                                                                            ("mask_path", spec.mask_path))}, "zoom": [0.5]}]}})


def test_zoomed_images_crop_around_the_object_and_move(tmp_path: Path) -> None:
    from PIL import Image

    img = np.zeros((90, 120), np.uint8)
    img[30:40, 50:65] = 200  # 10 x 15 pixels: crops of 30 (factor 2) and 45 (factor 3) pixels
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray((img > 0).astype(np.uint8) * 255).save(tmp_path / "a_mask.png")
    spec = DatasetSpec(kind="images", path=str(tmp_path / "a.png"), zoom=(2.0, 3.0))
    stills = load_videos(spec, image_size=96)
    assert [v.num_frames for v in stills] == [1, 1] and [v.obj_ids for v in stills] == [(255,), (255,)]
    for v, side in zip(stills, (30, 45)):
        share = 150 / side**2
        assert abs(float(v.masks.float().mean()) - share) < 0.01
        assert abs(float(v.frames.float().mean()) / 200 - share) < 0.01  # the frame is the same crop
    moving = load_videos(dataclasses.replace(spec, motion_frames=4), image_size=96)
    assert [v.num_frames for v in moving] == [4, 4] and all(bool(v.present.all()) for v in moving)
    assert not torch.equal(moving[0].frames[0], moving[0].frames[3])
    mask = (img > 0).astype(np.uint8) * 255
    mask[30, 50] = 1  # a mask of exactly the values 1 and 255 is one object, 255, zoomed or not
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    assert [v.obj_ids for v in load_videos(spec, image_size=96)] == [(255,), (255,)]
    assert [v.obj_ids for v in load_videos(dataclasses.replace(spec, zoom=()), image_size=96)] == [(255,)]


def test_real_split_never_trains_on_a_held_out_case(shared_data: Path) -> None:
    from medsam2kit.reference import (DEFAULT_SOURCES, HELD_OUT, SOURCE_WEIGHTS, shared_images, shared_recordings,
                                      shared_volumes, real_datasets, real_validation)

    specs = real_datasets(shared_data, sources=tuple(SOURCE_WEIGHTS))
    trained = [Path(s["path"]).name for s in specs if "path" in s] + \
              [Path(s["mask_path"]).name for s in specs if "mask_path" in s]
    held = [prefix for prefixes in HELD_OUT.values() for prefix in prefixes]
    assert trained and not [t for t in trained if t.startswith(tuple(held))]
    sources = {s["name"].split(":")[0] for s in specs}
    assert sources == {"phantoms", "volumes", "zoom", "regions", "pasted", "carotid", "fetal", "fetal_zoom"}
    shipped = {s["name"].split(":")[0] for s in real_datasets(shared_data)}
    assert shipped == set(DEFAULT_SOURCES) == sources - {"regions", "pasted", "zoom", "fetal_zoom"}
    zoomed = [s for s in specs if s["name"].startswith("zoom:")]
    assert zoomed and all(s["zoom"] and s["kind"] == "volume" for s in zoomed)
    assert abs(sum(s["weight"] for s in specs) - sum(SOURCE_WEIGHTS.values())) < 1e-9
    val = [Path(s["path"]).name for s in real_validation(shared_data)]
    assert val and all(v.startswith(tuple(held)) for v in val)
    names = {c.name for load in (shared_volumes, shared_recordings, shared_images) for c in load(shared_data)}
    assert len(names) == 5 + 3 + 76


def test_recipe_selection_runs_leave_the_validation_cases_out(shared_data: Path) -> None:
    from medsam2kit.demo import training_supports
    from medsam2kit.reference import (HELD_OUT, SOURCE_WEIGHTS, VALIDATION, real_datasets, real_validation,
                                      shared_images, shared_recordings, shared_volumes, split_of)

    held = {p for prefixes in HELD_OUT.values() for p in prefixes}
    chosen = {p for prefixes in VALIDATION.values() for p in prefixes}
    assert not held & chosen  # no case is both chosen on and reported

    def names(specs: list[dict]) -> set[str]:
        return {Path(s["path"]).name for s in specs if "path" in s}

    full = names(real_datasets(shared_data, sources=tuple(SOURCE_WEIGHTS)))
    selection = real_datasets(shared_data, sources=tuple(SOURCE_WEIGHTS), exclude_validation=True)
    # exactly the validation cases go (brute force over the file names against the prefixes)
    assert full - names(selection) == {n for n in full if n.startswith(tuple(chosen))} != set()
    assert abs(sum(s["weight"] for s in selection) - sum(SOURCE_WEIGHTS.values())) < 1e-9
    val = [Path(s["path"]) for s in real_validation(shared_data, "validation")]
    assert {split_of(p.parent.name, p) for p in val} == {"validation"}
    cases = [*shared_volumes(shared_data, "validation"), *shared_recordings(shared_data, "validation"),
             *shared_images(shared_data, "validation")]
    assert len(cases) == 2 + 2 + 40 and all(c.name.startswith(tuple(chosen)) for c in cases)
    assert len(training_supports(shared_data)) == 2  # hippocampus 184 and 195
    assert len(training_supports(shared_data, without=("held_out", "validation"))) == 1  # 184 only
    assert split_of("msd_hippocampus", Path("hippocampus_184_img.nii.gz")) == "train"


def test_a_selection_run_config_carries_its_size_augmentation_and_validation_curves(shared_data: Path) -> None:
    from medsam2kit.reference import real_train_config, split_of

    cfg = real_train_config(shared_data, image_size=256, augment="generic", exclude_validation=True, steps=10)
    assert cfg.model.image_size == 256 and cfg.data.augment == "generic" and cfg.schedule.steps == 10
    assert {split_of(Path(s.path).parent.name, Path(s.path)) for s in cfg.data.val} == {"validation"}
    assert {split_of(Path(s.path).parent.name, Path(s.path)) for s in cfg.data.train if s.path} == {"train"}
    shipped = real_train_config(shared_data)
    assert shipped.model.image_size is None and shipped.data.augment == "none"
    assert {split_of(Path(s.path).parent.name, Path(s.path)) for s in shipped.data.val} == {"held_out"}
    assert {split_of(Path(s.path).parent.name, Path(s.path)) for s in shipped.data.train if s.path} == {"train", "validation"}


@pytest.mark.parametrize(("task", "folder", "kind"), [("fetal-head", "hc18_fetal_us", "images"), ("carotid", "carotid_us", "cine")])
def test_a_task_recipe_trains_on_its_task_of_its_split_only(shared_data: Path, task: str, folder: str, kind: str) -> None:
    from medsam2kit.reference import reference_checkpoint, shared_files, split_of, task_train_config

    for exclude, splits in ((False, ("train", "validation")), (True, ("train",))):
        cfg = task_train_config(shared_data, task, exclude_validation=exclude)
        paths = [Path(s.path) for s in cfg.data.train]
        assert sorted(paths) == sorted(shared_files(shared_data, folder, splits))
        assert {split_of(folder, p) for p in paths} == set(splits)
        assert all(s.kind == kind for s in cfg.data.train)
        if task == "fetal-head":  # zoomed around the head, as box prompts crop at inference
            assert all(s.zoom and s.motion_frames == 8 for s in cfg.data.train)
        assert sum(s.weight for s in cfg.data.train) == pytest.approx(1.0)
        assert cfg.data.val == () and Path(cfg.model.checkpoint) == reference_checkpoint()
        assert cfg.schedule.steps == 600 and cfg.output_dir == f"runs/reference_{task.replace('-', '_')}"
        assert cfg.data.augment == "none" and cfg.model.image_size is None  # the configuration's 128 px
    assert task_train_config(shared_data, task, augment="generic").data.augment == "generic"
    assert task_train_config(shared_data, task, image_size=256).model.image_size == 256


def test_the_volumes_task_recipe_trains_on_phantoms_and_the_labelled_volumes_of_its_split(shared_data: Path) -> None:
    from medsam2kit.reference import (SOURCE_WEIGHTS, VOLUME_DATASETS, ZOOM_FACTORS, shared_files, split_of,
                                      task_train_config)

    for exclude, splits in ((False, ("train", "validation")), (True, ("train",))):
        cfg = task_train_config(shared_data, "volumes", exclude_validation=exclude)
        volumes = sorted(p for f in VOLUME_DATASETS for p in shared_files(shared_data, f, splits))
        assert volumes and {split_of(p.parent.name, p) for p in volumes} == set(splits)
        assert {s.kind for s in cfg.data.train} == {"synthetic", "volume"}
        whole = [s for s in cfg.data.train if s.kind == "volume" and not s.zoom]
        zoomed = [s for s in cfg.data.train if s.kind == "volume" and s.zoom]
        assert sorted({Path(s.path) for s in whole}) == volumes  # 1 mm isotropic ones once per axis
        assert sorted(Path(s.path) for s in zoomed) == volumes and all(s.zoom == ZOOM_FACTORS for s in zoomed)
        assert sum(s.weight for s in cfg.data.train) == pytest.approx(
            SOURCE_WEIGHTS["phantoms"] + SOURCE_WEIGHTS["volumes"] + SOURCE_WEIGHTS["zoom"])
        assert cfg.data.val == () and cfg.schedule.steps == 600 and cfg.output_dir == "runs/reference_volumes"
        assert cfg.data.augment == "generic"  # TASK_RECIPES["volumes"].augment
    assert task_train_config(shared_data, "volumes", augment="none").data.augment == "none"


def test_an_unknown_task_recipe_is_refused_by_name(tmp_path: Path) -> None:
    from medsam2kit.errors import InvalidInputError
    from medsam2kit.reference import task_train_config

    with pytest.raises(InvalidInputError, match="task: expected one of fetal-head, carotid, volumes, got 'liver'"):
        task_train_config(tmp_path, "liver")