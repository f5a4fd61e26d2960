"""Tests of medsam2kit.models and the checkpoint layouts of medsam2kit.predictor.checkpoints.

No network: the hub is exercised against hub-cache folders laid out as huggingface_hub lays them
out (``models--org--name/blobs/<sha>``, ``snapshots/<rev>/<file>`` symlinks, ``refs/main``),
with ``HF_HUB_OFFLINE=1``, and the download branch with a stand-in for ``hf_hub_download``.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from medsam2kit import models as zoo
from medsam2kit.errors import CheckpointError, ConfigError, InvalidInputError, MissingFileError
from medsam2kit.models import (
    ModelEntry,
    cached_checkpoint,
    expected_path,
    get_entry,
    list_models,
    load_model,
    model_cache_dir,
    resolve_checkpoint,
    resolve_model,
)
from medsam2kit.predictor import SAM2Predictor, build_model, resolve_config
from medsam2kit.predictor.checkpoints import (
    SAM21_ONLY_KEYS,
    guess_config,
    inspect_checkpoint,
    load_checkpoint,
    read_checkpoint,
)

HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test: its own medsam2kit home and an empty huggingface_hub cache, offline."""
    from huggingface_hub import constants

    home = tmp_path / "home"
    monkeypatch.setenv(zoo.ENV_HOME, str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_default_cache"))
    return home / "models"


@pytest.fixture(scope="module")
def states() -> dict[str, dict[str, torch.Tensor]]:
    """Random weights of the three architectures the zoo's files hold (keys do not depend on the
    input size, so 256 px builds stand in for 512/1024 px checkpoints)."""
    out = {}
    for config in ("sam2_hiera_t", "sam2.1_hiera_t", "sam2.1_hiera_micro"):
        size = None if config == "sam2.1_hiera_micro" else 256
        out[config] = {k: v.clone() for k, v in build_model(config, device="cpu", image_size=size).state_dict().items()}
    return out


def hub_file(hub: Path, entry: ModelEntry, content: Callable[[Path], object], *, revision: str | None = None) -> Path:
    """Lay a file out as huggingface_hub's cache does; returns the snapshot path (a symlink)."""
    revision = revision or entry.revision or "0" * 40
    assert entry.repo_id is not None
    repo = hub / f"models--{entry.repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    tmp = repo / "blobs" / "incoming"
    content(tmp)
    blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blob)
    snap = repo / "snapshots" / revision / entry.filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snap


def write_bytes(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


def assert_weights_equal(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(saved)
    for key, value in saved.items():
        assert torch.equal(got[key].cpu(), value.to(got[key].dtype)), key


# --- the entries -------------------------------------------------------------------------------


def test_entries_are_complete_consistent_and_unique() -> None:
    entries = list_models()
    names = [e.name for e in entries]
    assert len(set(names)) == len(names)
    assert len({e.filename.lower() for e in entries}) == len(entries)
    for e in entries:
        resolve_config(e.config)
        assert e.image_size % 32 == 0 and e.layout in ("model", "model_state_dict", "state_dict", "bare")
        assert e.sha256 is None or HEX64.fullmatch(e.sha256), e.name
        assert e.revision is None or HEX40.fullmatch(e.revision), e.name
        assert e.licence and e.description and e.notes and e.homepage
        if not e.bundled:
            assert (e.sha256 is None) == ("not verified" in e.notes), e.name  # honest about the hash
        if e.revision is None and not e.bundled:
            assert "latest main" in e.notes  # honest about the revision
        if not e.bundled:
            assert e.repo_id and e.hub_url and e.hub_url.endswith(e.filename) and e.download_urls
    by = {e.name: e for e in entries}
    for word, size in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l")):
        v2, v21 = by[f"sam2_hiera_{word}"], by[f"sam2.1_hiera_{word}"]
        assert (v2.config, v21.config) == (f"sam2_hiera_{size}", f"sam2.1_hiera_{size}")
        assert v2.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{word}.pt"
        assert v21.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{word}.pt"
        assert v2.repo_id == f"facebook/sam2-hiera-{word.replace('_', '-')}"
        assert v21.repo_id == f"facebook/sam2.1-hiera-{word.replace('_', '-')}"
        assert v2.image_size == v21.image_size == 1024 and v2.sha256 and v21.sha256
    medsam2 = [e for e in entries if e.family == "MedSAM2"]
    assert {e.filename for e in medsam2} == {"MedSAM2_latest.pt", "MedSAM2_2411.pt", "MedSAM2_US_Heart.pt",
                                            "MedSAM2_MRI_LiverLesion.pt", "MedSAM2_CTLesion.pt"}
    assert all((e.config, e.image_size, e.repo_id, e.layout) == ("sam2.1_hiera_t", 512, "wanglab/MedSAM2", "model")
               for e in medsam2)
    med = by["medical_sam2_pretrain"]
    assert (med.config, med.image_size, med.layout, med.dtype) == ("sam2_hiera_t", 1024, "bare", "bfloat16")
    ref = by["reference"]
    assert ref.bundled and ref.config == "sam2.1_hiera_micro" and cached_checkpoint(ref) is not None


@pytest.mark.parametrize("config", sorted({e.config for e in list_models()}))
def test_every_entry_config_builds_and_its_keys_name_it(config: str) -> None:
    size = None if config == "sam2.1_hiera_micro" else 256  # 1024 px hiera-l builds too, only slower
    state = build_model(config, device="cpu", image_size=size).state_dict()
    assert guess_config(state) == config
    assert all(k in state for k in SAM21_ONLY_KEYS) == config.startswith("sam2.1")


def test_medsam2_entry_builds_at_512_with_rope_feature_size_32() -> None:
    spec = resolve_model("reference")
    assert (spec.config, spec.image_size) == ("sam2.1_hiera_micro", 128)
    entry = get_entry("medsam2_latest")
    model = build_model(entry.config, device="cpu", image_size=entry.image_size)
    assert model.image_size == 512
    assert model.memory_attention.layers[0].self_attn.freqs_cis.shape[0] == 32 * 32


def test_unknown_names_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"unknown model name 'medsam2_lates'.*did you mean 'medsam2_latest'") as err:
        resolve_checkpoint("medsam2_lates")
    assert "sam2.1_hiera_large" in str(err.value)  # lists the names
    with pytest.raises(MissingFileError, match="nope.pt"):
        resolve_checkpoint(tmp_path / "nope.pt")
    assert get_entry("MedSAM2_latest.pt").name == "medsam2_latest"  # by file name, any case
    assert get_entry("SAM2.1_HIERA_LARGE").name == "sam2.1_hiera_large"


def test_cache_folder_follows_medsam2kit_home(isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert model_cache_dir() == isolated
    assert model_cache_dir(tmp_path / "x") == tmp_path / "x"
    assert expected_path(get_entry("sam2.1_hiera_large")) == isolated / "sam2.1_hiera_large.pt"
    monkeypatch.delenv(zoo.ENV_HOME)
    from platformdirs import user_cache_dir

    assert model_cache_dir() == Path(user_cache_dir("medsam2kit")) / "models"


# --- layouts -------------------------------------------------------------------------------------


def test_medical_sam2_layout_bare_bf16_ddp_prefix_loads_strictly(states: dict[str, Any], tmp_path: Path) -> None:
    saved = {f"module.{k}": v.to(torch.bfloat16) for k, v in states["sam2_hiera_t"].items()}
    path = tmp_path / "MedSAM2_pretrain.pth"  # the published name: its entry gives the input size
    torch.save(saved, path)
    info = inspect_checkpoint(path)
    assert (info.layout, info.prefix, info.dtypes, info.config) == ("bare", "module.", ("torch.bfloat16",), "sam2_hiera_t")
    pred = SAM2Predictor.from_pretrained(path, device="cpu")
    assert pred.image_size == 1024
    weights = pred.model.state_dict()
    for key, value in saved.items():
        plain = key[len("module."):]
        assert weights[plain].dtype == torch.float32
        assert torch.equal(weights[plain], value.float()), plain  # exact: bf16 -> fp32 is lossless
        assert torch.allclose(weights[plain], states["sam2_hiera_t"][plain], rtol=1e-2, atol=1e-2)


def test_medsam2_layout_at_512(states: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "MedSAM2_latest.pt"
    torch.save({"model": states["sam2.1_hiera_t"]}, path)
    loaded = load_model(path, device="cpu")
    assert (loaded.entry, loaded.config, loaded.image_size) == (None, "sam2.1_hiera_t", 512)
    assert_weights_equal(loaded.model, states["sam2.1_hiera_t"])
    other = tmp_path / "finetuned.pt"  # no zoo name: the config's size unless told
    torch.save({"model": states["sam2.1_hiera_t"]}, other)
    assert resolve_model(other).image_size is None
    assert resolve_model(other, image_size=512).image_size == 512


@pytest.mark.parametrize("layout,dtype,prefix", [("model_state_dict", torch.float16, ""),
                                                  ("state_dict", torch.float32, "_orig_mod."),
                                                  ("model", torch.bfloat16, "module.")])
def test_training_script_layouts(states: dict[str, Any], tmp_path: Path, layout: str, dtype: torch.dtype,
                                 prefix: str) -> None:
    micro = states["sam2.1_hiera_micro"]
    path = tmp_path / "run.ckpt"
    torch.save({layout: {prefix + k: v.to(dtype) for k, v in micro.items()}, "epoch": 3, "optimizer": {}}, path)
    state, info = read_checkpoint(path)
    assert (info.layout, info.prefix, info.config) == (layout, prefix, "sam2.1_hiera_micro")
    pred = SAM2Predictor.from_pretrained(path, device="cpu")
    assert pred.image_size == 128
    assert_weights_equal(pred.model, {k: v.to(dtype) for k, v in micro.items()})
    assert next(pred.model.parameters()).dtype == torch.float32


def test_files_that_hold_no_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match=r"meta\.pt holds no state dict.*'epoch'"):
        read_checkpoint(path)
    unknown = tmp_path / "unknown.pt"
    torch.save({"weight": torch.zeros(2)}, unknown)
    with pytest.raises(ConfigError, match=r"cannot tell which SAM2 config .*unknown\.pt.*config="):
        load_model(unknown, device="cpu")


# --- mismatches --------------------------------------------------------------------------------


def test_sam2_0_checkpoint_into_sam2_1_config_names_keys_and_the_fitting_config(states: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": states["sam2_hiera_t"]}, path)
    model = build_model("sam2.1_hiera_t", device="cpu", image_size=256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path, config="sam2.1_hiera_t")
    text = str(err.value)
    assert str(path) in text and "config sam2.1_hiera_t" in text
    assert "missing keys 3 ['no_obj_embed_spatial', 'obj_ptr_tpos_proj.bias', 'obj_ptr_tpos_proj.weight']" in text
    assert "SAM 2.0 hiera-t: use config 'sam2_hiera_t'" in text and "Nothing was loaded" in text
    assert_weights_equal(model, before)  # nothing loaded
    # the reverse: unexpected keys, and the SAM 2.1 config suggested
    path21 = tmp_path / "v21.pt"
    torch.save({"model": states["sam2.1_hiera_t"]}, path21)
    with pytest.raises(CheckpointError, match=r"unexpected keys 3 .*use config 'sam2\.1_hiera_t'"):
        SAM2Predictor.from_pretrained(path21, config="sam2_hiera_t", device="cpu", image_size=256)


def test_mismatch_through_a_zoo_entry_names_the_entry(states: dict[str, Any], isolated: Path) -> None:
    isolated.mkdir(parents=True)
    torch.save({"model": states["sam2.1_hiera_micro"]}, isolated / "MedSAM2_2411.pt")  # wrong weights
    with pytest.raises(CheckpointError) as err:
        SAM2Predictor.from_pretrained("medsam2_2411", device="cpu")
    text = str(err.value)
    assert "model zoo entry 'medsam2_2411'" in text and str(isolated / "MedSAM2_2411.pt") in text
    assert "shape mismatches" in text and "use config 'sam2.1_hiera_micro'" in text


# --- the cache and the hub --------------------------------------------------------------------


def test_from_pretrained_through_the_hub_cache_records_and_checks_the_hash(states: dict[str, Any],
                                                                          isolated: Path) -> None:
    entry = get_entry("medsam2_2411")  # sha256 not published: recorded on first use
    weights = {k: v.to(torch.bfloat16) for k, v in states["sam2.1_hiera_t"].items()}
    snap = hub_file(isolated / "hub", entry, lambda p: torch.save({"model": weights}, p))
    start = time.perf_counter()
    pred = SAM2Predictor.from_pretrained("medsam2_2411", device="cpu")
    assert time.perf_counter() - start < 30
    assert pred.image_size == 512
    assert_weights_equal(pred.model, weights)
    record = isolated / "MedSAM2_2411.pt.sha256"
    assert record.read_text().split()[0] == hashlib.sha256(snap.read_bytes()).hexdigest()
    assert resolve_checkpoint("medsam2_2411") == (entry, snap)  # checked again: same hash
    # the file changes behind our back: named error, the file is kept (it may be a deliberate update)
    blob = snap.resolve()
    blob.write_bytes(blob.read_bytes() + b"x")
    with pytest.raises(CheckpointError, match=r"was recorded when it was first used.*delete .*MedSAM2_2411\.pt\.sha256"):
        resolve_checkpoint("medsam2_2411")
    assert blob.exists()


def test_known_sha256_mismatch_in_the_cache_is_an_error_and_the_file_is_not_kept(isolated: Path) -> None:
    entry = get_entry("medsam2_latest")
    snap = hub_file(isolated / "hub", entry, write_bytes(b"not the published file"))
    blob = snap.resolve()
    with pytest.raises(CheckpointError, match=rf"sha256 [0-9a-f]{{64}}, expected {entry.sha256}.*removed") as err:
        SAM2Predictor.from_pretrained("medsam2_latest", device="cpu")
    assert str(isolated / "MedSAM2_latest.pt") in str(err.value)  # where to put a good copy
    assert not blob.exists() and not snap.is_symlink()
    # a file put by hand is checked the same way
    manual = isolated / "MedSAM2_latest.pt"
    manual.write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="removed"):
        resolve_checkpoint("medsam2_latest")
    assert not manual.exists()


def test_missing_file_offline_says_where_to_download_and_where_to_put_it(isolated: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(MissingFileError) as err:
        SAM2Predictor.from_pretrained("sam2.1_hiera_large", device="cpu")
    assert time.perf_counter() - start < 5
    text = str(err.value)
    assert "HF_HUB_OFFLINE" in text
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt" in text
    assert "https://huggingface.co/facebook/sam2.1-hiera-large/resolve/" in text
    assert f"put it at {isolated / 'sam2.1_hiera_large.pt'}" in text
    assert not isolated.exists()  # nothing written


def test_no_network_fails_fast_without_the_offline_flag(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.perf_counter()
    with pytest.raises(MissingFileError, match=r"cannot reach 127\.0\.0\.1:9.*put it at .*sam2_hiera_small\.pt"):
        resolve_checkpoint("sam2_hiera_small")
    assert time.perf_counter() - start < zoo.HUB_TIMEOUT_S + 5


def test_download_branch_calls_the_hub_with_the_pinned_revision(isolated: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(zoo, "_hub_unreachable", lambda: "")
    calls: list[tuple[Any, ...]] = []

    def fake_download(repo_id: str, filename: str, *, revision: str | None, cache_dir: Path,
                      etag_timeout: float) -> str:
        calls.append((repo_id, filename, revision, Path(cache_dir), etag_timeout))
        entry = zoo.find_entry(filename)
        assert entry is not None
        return str(hub_file(Path(cache_dir), entry, write_bytes(b"corrupted download")))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    entry = get_entry("sam2.1_hiera_tiny")
    with pytest.raises(CheckpointError, match=rf"expected {entry.sha256}"):
        resolve_checkpoint("sam2.1_hiera_tiny")
    assert calls == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", entry.revision, isolated / "hub",
                      zoo.HUB_TIMEOUT_S)]
    assert not list((isolated / "hub").rglob("sam2.1_hiera_tiny.pt"))  # the bad download is not kept
    assert not [p for p in (isolated / "hub").rglob("*") if p.is_file() and "refs" not in p.parts]

    def failing(*args: Any, **kwargs: Any) -> str:
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("connection lost")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing)
    with pytest.raises(MissingFileError, match=r"download from facebook/sam2.1-hiera-tiny failed.*put it at"):
        resolve_checkpoint("sam2.1_hiera_tiny")
    with pytest.raises(MissingFileError, match="download=False"):
        resolve_checkpoint("sam2.1_hiera_tiny", download=False)


def test_files_found_by_hand_and_in_huggingface_hubs_own_cache(isolated: Path, tmp_path: Path) -> None:
    us = get_entry("medsam2_us_heart")
    isolated.mkdir(parents=True)
    (isolated / us.filename).write_bytes(b"placed by hand")
    assert resolve_checkpoint("medsam2_us_heart") == (us, isolated / us.filename)
    assert cached_checkpoint(us) == isolated / us.filename
    # huggingface_hub's own cache (shared with other tools) is used, never modified
    ct = get_entry("medsam2_ct_lesion")
    snap = hub_file(tmp_path / "hf_default_cache", ct, write_bytes(b"ct lesion"))
    assert resolve_checkpoint("medsam2_ct_lesion") == (ct, snap)
    latest = get_entry("medsam2_latest")  # known sha256: a wrong file there is skipped, not deleted
    other = hub_file(tmp_path / "hf_default_cache", latest, write_bytes(b"other"))
    with pytest.raises(MissingFileError, match="HF_HUB_OFFLINE"):
        resolve_checkpoint("medsam2_latest")
    assert other.resolve().exists()
    assert cached_checkpoint(get_entry("sam2_hiera_large")) is None


def test_reference_entry_is_the_bundled_model() -> None:
    from medsam2kit.reference import reference_checkpoint, reference_predictor

    entry, path = resolve_checkpoint("reference")
    assert entry is not None and entry.bundled and path == reference_checkpoint()
    loaded = load_model("reference", device="cpu")
    assert loaded.describe().startswith("bundled model reference (sam2.1_hiera_micro")
    assert_weights_equal(loaded.model, reference_predictor().model.state_dict())
