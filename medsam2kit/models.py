"""The model zoo: SAM 2.0/2.1, MedSAM2, Medical-SAM2 and the bundled reference model, by name.

Each :class:`ModelEntry` says which config the weights are for, at which input size, how the file
is laid out, where it comes from (the publisher's URL, and the Hugging Face repository with a
pinned revision), its sha256 and its licence. :func:`resolve_checkpoint` finds the file, in this
order:

1. ``<cache>/<filename>`` (where to put a file downloaded by hand);
2. a Hugging Face hub cache: ``<cache>/hub``, then huggingface_hub's own cache (``HF_HUB_CACHE``),
   at the pinned revision (or any revision whose file has the known sha256);
3. ``huggingface_hub.hf_hub_download`` into ``<cache>/hub``, unless ``HF_HUB_OFFLINE=1`` is set
   (before it, the hub is probed with a :data:`HUB_TIMEOUT_S` connection timeout, because
   huggingface_hub retries a failed connection for about 25 s; skipped behind an HTTPS proxy).

Every entry is on the Hugging Face hub, so medsam2kit does not download from the publishers' own
URLs itself (the hub client already writes atomically, resumes, and honours proxies and tokens);
those URLs are given in the messages, for downloading by hand.

``<cache>`` is ``$MEDSAM2KIT_HOME/models`` when ``MEDSAM2KIT_HOME`` is set, else
``platformdirs.user_cache_dir("medsam2kit")/models`` (``~/.cache/medsam2kit/models`` on Linux),
or the ``cache_dir`` argument. A file whose sha256 differs from the entry's is an error and is
removed from ``<cache>`` (never from huggingface_hub's own cache, which is skipped instead).
Entries without a verified sha256 get theirs recorded on first use (``<cache>/<filename>.sha256``)
and checked on every later use. When the file cannot be found or downloaded (offline, no
network, unknown revision) the error says where to download it and the exact path to put it at;
it comes within seconds instead of hanging.

The weights do not say at which input size they were trained (no parameter depends on it), so
the entry carries it: MedSAM2 is ``sam2.1_hiera_t`` at 512 px, which sets the memory-attention
RoPE feature sizes to 32 (:func:`medsam2kit.predictor.checkpoints.image_size_overrides`).

Example:
    >>> entry = get_entry("medsam2_latest")
    >>> entry.config, entry.image_size, entry.repo_id
    ('sam2.1_hiera_t', 512, 'wanglab/MedSAM2')
    >>> loaded = load_model("reference", device="cpu")
    >>> loaded.config, loaded.image_size
    ('sam2.1_hiera_micro', 128)
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import os
import socket
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from medsam2kit._files import atomic_write
from medsam2kit.errors import CheckpointError, ConfigError, InvalidInputError, MissingFileError
from medsam2kit.predictor.checkpoints import (
    CheckpointInfo,
    Layout,
    build_model,
    config_name,
    inspect_checkpoint,
    load_state,
    read_checkpoint,
)
from medsam2kit.predictor.device import resolve_device

if TYPE_CHECKING:
    import torch

    from medsam2kit.backend import SAM2Model

#: Environment variable naming medsam2kit's home folder; models are cached in its ``models/``.
ENV_HOME = "MEDSAM2KIT_HOME"
#: Seconds huggingface_hub waits for the hub's answer before falling back to the cache.
HUB_TIMEOUT_S = 5.0
#: Name of the bundled reference model's entry (the default model).
REFERENCE = "reference"
#: Name of the bundled phantom-only model's entry.
REFERENCE_PHANTOMS = "reference-phantoms"
#: Name of the bundled fetal-head task model's entry (box prompts on fetal-head ultrasound).
REFERENCE_FETAL_HEAD = "reference-fetal-head"
#: Name of the bundled carotid task model's entry (tracking the carotid artery in B-mode recordings).
REFERENCE_CAROTID = "reference-carotid"
#: Name of the bundled volumes task model's entry (one-prompt propagation through CT and MRI volumes).
REFERENCE_VOLUMES = "reference-volumes"


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint of the model zoo.

    Attributes:
        name: the zoo name (``medsam2kit models`` lists them).
        family: ``"SAM 2.0"``, ``"SAM 2.1"``, ``"MedSAM2"``, ``"Medical-SAM2"`` or ``"medsam2kit"``.
        config: the SAM2 config the weights are for (see :func:`medsam2kit.predictor.resolve_config`).
        image_size: the input size the weights were trained at (square, px).
        filename: the file name as published.
        layout: how the file holds its state dict (see
            :func:`medsam2kit.predictor.checkpoints.read_checkpoint`; the loader detects it anyway).
        dtype: the stored tensor dtype (``"float32"`` or ``"bfloat16"``; cast on load).
        sha256: the file's sha256 when verified from the publisher's repository; ``None``: not
            verified, recorded on first use and checked afterwards (see ``notes``).
        repo_id: the Hugging Face model repository, ``None`` when not on the hub.
        revision: the pinned hub commit; ``None`` means the repository's latest ``main`` (used
            where no commit could be verified; the sha256, when known, still pins the content).
        url: the publisher's download URL (``None`` for the bundled model).
        homepage: the project's page.
        licence: the weights' licence as the publisher states it.
        description: one line.
        notes: provenance of the facts above, and caveats.
        overrides: extra dotted config overrides (beside ``image_size``) as ``(key, value)`` pairs.
    """

    name: str
    family: str
    config: str
    image_size: int
    filename: str
    layout: Layout
    dtype: str
    sha256: str | None
    repo_id: str | None
    revision: str | None
    url: str | None
    homepage: str
    licence: str
    description: str
    notes: str = ""
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def bundled(self) -> bool:
        """Whether the file ships inside the medsam2kit package."""
        return self.repo_id is None and self.url is None

    @property
    def hub_url(self) -> str | None:
        """The file's download URL on the Hugging Face hub (at the pinned revision)."""
        if self.repo_id is None:
            return None
        return f"https://huggingface.co/{self.repo_id}/resolve/{self.revision or 'main'}/{self.filename}"

    @property
    def download_urls(self) -> tuple[str, ...]:
        """Where the file can be downloaded by hand: the publisher's URL, then the hub's."""
        urls = [u for u in (self.url, self.hub_url) if u]
        return tuple(dict.fromkeys(urls))

    @property
    def finetune(self) -> FinetuneDefaults:
        """The optimiser values ``finetune`` uses for this model when a run leaves them unset."""
        return finetune_defaults(self.config)


@dataclass(frozen=True)
class FinetuneDefaults:
    """The optimiser values a fine-tuning run of a model takes when its config leaves them unset
    (see :func:`medsam2kit.train.config.resolve_optim`).

    Attributes:
        lr: learning rate of everything but the image encoder.
        encoder_lr: image-encoder learning rate.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm.
        warmup_fraction: linear warm-up as a share of the run's steps.
        source: where the values come from.
    """

    lr: float
    encoder_lr: float
    weight_decay: float
    grad_clip: float
    warmup_fraction: float
    source: str


#: SAM2's own fine-tuning values (``sam2.1_hiera_b+_MOSE_finetune.yaml``): for pretrained SAM2-sized
#: models (Meta's SAM 2/2.1, MedSAM2, Medical-SAM2, any checkpoint of those configs).
SAM2_FINETUNE = FinetuneDefaults(5e-6, 3e-6, 0.1, 0.1, 0.0, "sam2's fine-tuning recipe (sam2.1_hiera_b+_MOSE_finetune.yaml)")
#: The bundled micro models (1.8 M parameters, 128 px): sam2's rate barely moves them (a 40-step
#: carotid run at 5e-6: held-out Dice 0.301 -> 0.298, weights before stage 3). The rate is the ultrasound study's choice
#: (``docs/us_study.md``, learning-rate factor: held-out carotid Dice 0.440 at 1e-3 against 0.372 at
#: 3e-4, 0.349 at 5e-5, 0.341 at 5e-6; it also forgets the most of what the model knew of other
#: tasks); weight decay, clipping and the warm-up (a tenth of the steps) are the study's.
MICRO_FINETUNE = FinetuneDefaults(1e-3, 1e-3, 0.01, 1.0, 0.1, "the ultrasound study's learning-rate factor (docs/us_study.md)")


def finetune_defaults(config: str | os.PathLike[str]) -> FinetuneDefaults:
    """The fine-tuning defaults of a model by its SAM2 config: :data:`MICRO_FINETUNE` for the
    bundled models' ``sam2.1_hiera_micro``, :data:`SAM2_FINETUNE` for every other config.

    Example:
        >>> finetune_defaults("sam2.1_hiera_t").lr, get_entry("reference").finetune.grad_clip
        (5e-06, 1.0)
    """
    from medsam2kit.reference import REFERENCE_CONFIG

    return MICRO_FINETUNE if config_name(os.fspath(config)) == REFERENCE_CONFIG else SAM2_FINETUNE


_META_2_0 = "https://dl.fbaipublicfiles.com/segment_anything_2/072824/"
_META_2_1 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_SAM2_HOME = "https://github.com/facebookresearch/sam2"
_SAM2_NOTES = (
    "URL from facebookresearch/sam2 checkpoints/download_ckpts.sh; sha256 = the Git LFS object id "
    "of the file on the Hugging Face hub ({where}); revision = a commit of {repo} whose snapshot "
    "holds the file ({rev_source})."
)


def _sam2(gen: str, size: str, word: str, sha256: str, revision: str, where: str, rev_source: str) -> ModelEntry:
    prefix = "sam2.1" if gen == "2.1" else "sam2"
    repo = f"facebook/{prefix}-hiera-{word.replace('_', '-')}"
    return ModelEntry(
        name=f"{prefix}_hiera_{word}",
        family=f"SAM {gen}",
        config=f"{prefix}_hiera_{size}",
        image_size=1024,
        filename=f"{prefix}_hiera_{word}.pt",
        layout="model",
        dtype="float32",
        sha256=sha256,
        repo_id=repo,
        revision=revision,
        url=f"{_META_2_1 if gen == '2.1' else _META_2_0}{prefix}_hiera_{word}.pt",
        homepage=_SAM2_HOME,
        licence="Apache-2.0",
        description=f"Meta's SAM {gen} Hiera-{size.upper() if size != 'b+' else 'B+'} ({word.replace('_', ' ')}), "
        "natural images and videos",
        notes=_SAM2_NOTES.format(where=where, repo=repo, rev_source=rev_source),
    )


_MEDSAM2_REPO = "wanglab/MedSAM2"
_MEDSAM2_REV = "e4a6f35edd7e091619cbc0750f462f1574e23955"
_MEDSAM2_NOTES = (
    "File names from bowang-lab/MedSAM2 checkpoints/download_medsam2_models.py; config = "
    "MedSAM2's sam2.1_hiera_t512.yaml (sam2.1_hiera_t with image_size 512 and RoPE feat_sizes 32); "
    "revision e4a6f35 = the head of main listing all five files (hub page) and a huggingface_hub "
    "cache snapshot seen in public code. Licence: the model card's metadata says CC-BY-SA-4.0 and "
    "its text restricts the weights to research and education. "
)


def _medsam2(name: str, filename: str, sha256: str | None, description: str) -> ModelEntry:
    hashed = ("sha256 from several independent public records of this file (size 156,040,129 bytes)."
              if sha256 else "sha256 not verified (no public record found): recorded on first use.")
    return ModelEntry(
        name=name,
        family="MedSAM2",
        config="sam2.1_hiera_t",
        image_size=512,
        filename=filename,
        layout="model",
        dtype="float32",
        sha256=sha256,
        repo_id=_MEDSAM2_REPO,
        revision=_MEDSAM2_REV,
        url=f"https://huggingface.co/{_MEDSAM2_REPO}/resolve/main/{filename}",
        homepage="https://github.com/bowang-lab/MedSAM2",
        licence="CC-BY-SA-4.0 (model card: research and education only)",
        description=description,
        notes=_MEDSAM2_NOTES + hashed,
    )


def _bundled(name: str, filename: str, description: str) -> ModelEntry:
    from medsam2kit.reference import REFERENCE_CONFIG

    return ModelEntry(
        name=name,
        family="medsam2kit",
        config=REFERENCE_CONFIG,
        image_size=128,
        filename=filename,
        layout="model",
        dtype="float32",
        sha256=None,
        repo_id=None,
        revision=None,
        url=None,
        homepage="docs/reference_model.md",
        licence="Apache-2.0 (ships with medsam2kit)",
        description=description,
        notes=("Ships inside the package (medsam2kit/weights), found with "
               "medsam2kit.reference.reference_checkpoint(); never downloaded, so no sha256 is kept."),
    )


def _references() -> tuple[ModelEntry, ...]:
    from medsam2kit.reference import (CAROTID_WEIGHTS, FETAL_HEAD_WEIGHTS, PHANTOM_WEIGHTS, REFERENCE_WEIGHTS,
                                      VOLUMES_WEIGHTS)

    return (
        _bundled(REFERENCE, REFERENCE_WEIGHTS, "bundled micro SAM 2.1 (1.8 M parameters) fine-tuned by medsam2kit on "
                 "real shared MRI, CT and ultrasound cases plus phantoms; not for clinical use"),
        _bundled(REFERENCE_PHANTOMS, PHANTOM_WEIGHTS, "the first bundled micro SAM 2.1, trained on phantoms only "
                 "(segments phantoms, not real images); not for clinical use"),
        _bundled(REFERENCE_FETAL_HEAD, FETAL_HEAD_WEIGHTS, "task model: the bundled reference model fine-tuned on "
                 "fetal-head ultrasound images for box prompts (HC18); not for clinical use"),
        _bundled(REFERENCE_CAROTID, CAROTID_WEIGHTS, "task model: the bundled reference model fine-tuned on "
                 "carotid B-mode recordings for tracking the common carotid artery; not for clinical use"),
        _bundled(REFERENCE_VOLUMES, VOLUMES_WEIGHTS, "task model: the bundled reference model fine-tuned on "
                 "the labelled CT and MRI volumes (and phantoms) for one-prompt propagation; the commands' default on "
                 "a volume; not for clinical use"),
    )


_ENTRIES: tuple[ModelEntry, ...] = (
    _sam2("2.1", "t", "tiny", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
          "de431c4043854a71d8101e17995dfe596bf101a5", "facebook/sam2.1-hiera-tiny file page",
          "a huggingface_hub cache snapshot path seen in public code"),
    _sam2("2.1", "s", "small", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
          "ee5bba1d82bb8749febdf90f45e84b687142ba03", "mirrors of Meta's file, and a public pin of this revision",
          "a public pin of this revision naming the file and its sha256"),
    _sam2("2.1", "b+", "base_plus", "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
          "b7320756a13354e7530a63935656d35b2f91a290", "mirrors of Meta's file",
          "a huggingface_hub cache snapshot path seen in public code"),
    _sam2("2.1", "l", "large", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
          "227a114a2f535cd147f82442e7d2038cdd2e5d68", "mirrors of Meta's file, and a public pin of this revision",
          "a public pin of this revision naming the file and its sha256"),
    _sam2("2.0", "t", "tiny", "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125",
          "7c218beaf0bb87874785f32b582f640134fc1c09", "facebook/sam2-hiera-tiny file page",
          "a huggingface_hub cache snapshot path seen in public code"),
    _sam2("2.0", "s", "small", "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3",
          "e080ada8afd19df5e165abe71b006edc7f4c3d4e", "facebook/sam2-hiera-small file page",
          "a huggingface_hub cache snapshot path seen in public code"),
    _sam2("2.0", "b+", "base_plus", "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071",
          "2869890888ba16bccc505194b4d5353caf4fd62b", "facebook/sam2-hiera-base-plus file page",
          "the hub's file page at this revision"),
    _sam2("2.0", "l", "large", "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b",
          "e6a8e8809b8f1bfa2238b6d080f3d05cc76bd251", "mirrors of Meta's file",
          "a huggingface_hub cache snapshot path seen in public code"),
    _medsam2("medsam2_latest", "MedSAM2_latest.pt",
             "c92743b99f00d078bf32a3afcc38aaa9faf1c1692dffe3eaa7a90938c1991060",
             "MedSAM2 (recommended): SAM 2.1 tiny fine-tuned on public 3D medical images and videos "
             "plus newly annotated data"),
    _medsam2("medsam2_2411", "MedSAM2_2411.pt", None, "MedSAM2 base model trained in Nov. 2024"),
    _medsam2("medsam2_us_heart", "MedSAM2_US_Heart.pt", None,
             "MedSAM2 fine-tuned for heart ultrasound video segmentation"),
    _medsam2("medsam2_mri_liver_lesion", "MedSAM2_MRI_LiverLesion.pt", None,
             "MedSAM2 fine-tuned for liver lesion MRI segmentation"),
    _medsam2("medsam2_ct_lesion", "MedSAM2_CTLesion.pt", None, "MedSAM2 fine-tuned for CT lesion segmentation"),
    ModelEntry(
        name="medical_sam2_pretrain",
        family="Medical-SAM2",
        config="sam2_hiera_t",
        image_size=1024,
        filename="MedSAM2_pretrain.pth",
        layout="bare",
        dtype="bfloat16",
        sha256="059572b072eff2e41975bf85b0dcca96bc58889db60a89e9f5b1f075236735d7",
        repo_id="jiayuanz3/MedSAM2_pretrain",
        revision=None,
        url="https://huggingface.co/jiayuanz3/MedSAM2_pretrain/resolve/main/MedSAM2_pretrain.pth",
        homepage="https://github.com/SuperMedIntel/Medical-SAM2",
        licence="not stated on the weights repository (the Medical-SAM2 code is GPL)",
        description="Medical SAM 2 (Zhu et al. 2024) pretrained weights: SAM 2.0 tiny at 1024 px",
        notes=(
            "Repository named in the Medical-SAM2 README; sha256 = the Git LFS object id on the hub "
            "file page (78.1 MB). revision None = latest main: only the short commit 0197aca could be "
            "seen, so no full commit is pinned; the sha256 pins the content. Medical-SAM2's own code "
            "loads these weights with strict=False; here loading is strict, and any key that does "
            "not fit sam2_hiera_t is reported by name."
        ),
    ),
)

@functools.cache
def _entries() -> tuple[ModelEntry, ...]:
    return (*_ENTRIES, *_references())


def list_models() -> list[ModelEntry]:
    """Every zoo entry, in the order ``medsam2kit models`` prints them.

    Example:
        >>> [e.name for e in list_models()][:2]
        ['sam2.1_hiera_tiny', 'sam2.1_hiera_small']
    """
    return list(_entries())


def models() -> Mapping[str, ModelEntry]:
    """The zoo as a read-only mapping from name to entry.

    Example:
        >>> models()["sam2.1_hiera_large"].filename
        'sam2.1_hiera_large.pt'
    """
    return MappingProxyType({e.name: e for e in _entries()})


def find_entry(name: str) -> ModelEntry | None:
    """The entry called ``name`` (case-insensitive), or whose file is called ``name``; else ``None``.

    Example:
        >>> find_entry("MedSAM2_latest.pt").name
        'medsam2_latest'
    """
    key = name.strip().lower()
    for entry in _entries():
        if entry.name.lower() == key:
            return entry
    for entry in _entries():
        if entry.filename.lower() == key:
            return entry
    return None


def get_entry(name: str) -> ModelEntry:
    """The zoo entry ``name`` (see :func:`find_entry`).

    Raises:
        InvalidInputError: unknown name; the message lists the known names.

    Example:
        >>> get_entry("sam2_hiera_tiny").config
        'sam2_hiera_t'
    """
    entry = find_entry(name)
    if entry is None:
        names = [e.name for e in _entries()]
        close = difflib.get_close_matches(name.lower(), names, n=2)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise InvalidInputError(
            f"model: unknown model name {name!r}{hint}; expected an existing checkpoint file or one of {names}"
        )
    return entry


def model_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding model files: ``cache_dir`` when given, else ``$MEDSAM2KIT_HOME/models``,
    else ``platformdirs.user_cache_dir("medsam2kit")/models``. Not created here.

    Example:
        >>> model_cache_dir("/data/models").as_posix()
        '/data/models'
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    home = os.environ.get(ENV_HOME, "").strip()
    if home:
        return Path(home).expanduser() / "models"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("medsam2kit")) / "models"


def expected_path(entry: ModelEntry, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where to put ``entry``'s file after downloading it by hand: ``<cache>/<filename>``.

    Example:
        >>> expected_path(get_entry("sam2.1_hiera_large"), cache_dir="/data/models").as_posix()
        '/data/models/sam2.1_hiera_large.pt'
    """
    return model_cache_dir(cache_dir) / entry.filename


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file, read in 8 MiB chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> file_sha256(p)[:12]
        'ba7816bf8f01'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (``1``, ``ON``, ``YES`` or ``TRUE``, as huggingface_hub reads it).

    Example:
        >>> isinstance(hub_offline(), bool)
        True
    """
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if value in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - a declared dependency
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _default_hub_cache() -> Path | None:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return None
    cache = getattr(constants, "HF_HUB_CACHE", None)
    return Path(cache) if cache else None


def _hub_lookup(entry: ModelEntry, hub_dir: Path) -> list[Path]:
    """Files of ``entry`` in the hub cache ``hub_dir`` (no network): the pinned revision first, then
    ``main`` when a known sha256 can vouch for another revision's file."""
    if entry.repo_id is None or not hub_dir.is_dir():
        return []
    from huggingface_hub import try_to_load_from_cache

    revisions: list[str | None] = [entry.revision]
    if entry.revision is not None and entry.sha256 is not None:
        revisions.append(None)
    found: list[Path] = []
    for revision in revisions:
        hit = try_to_load_from_cache(entry.repo_id, entry.filename, cache_dir=hub_dir, revision=revision)
        if isinstance(hit, str) and Path(hit).is_file() and Path(hit) not in found:
            found.append(Path(hit))
    return found


def _discard(path: Path, folder: Path) -> None:
    """Remove ``path`` (and, for a hub-cache symlink, its blob) when it lies in our ``folder``."""
    root = folder.resolve()
    target = path.resolve()
    for victim in (path, target):
        try:
            victim_parent = victim.parent.resolve()
        except OSError:  # pragma: no cover
            continue
        if victim_parent == root or root in victim_parent.parents:
            victim.unlink(missing_ok=True)


def _record_path(entry: ModelEntry, folder: Path) -> Path:
    return folder / f"{entry.filename}.sha256"


def _verify(entry: ModelEntry, path: Path, folder: Path, *, ours: bool) -> bool:
    """Check ``path`` against the entry's sha256 (or the hash recorded on first use).

    Returns ``False`` for a mismatching file outside our folder (skip it); raises for ours.
    """
    actual = file_sha256(path)
    if entry.sha256 is not None:
        if actual == entry.sha256:
            return True
        if not ours:
            return False
        _discard(path, folder)
        raise CheckpointError(
            f"model {entry.name!r}: {path} has sha256 {actual}, expected {entry.sha256} (a truncated or "
            f"different file); it was removed from the model cache. Run again to download it, or download "
            f"it from {' or '.join(entry.download_urls)} and put it at {folder / entry.filename}"
        )
    record = _record_path(entry, folder)
    if record.is_file():
        recorded = (record.read_text().split() or [""])[0]
        if recorded != actual:
            raise CheckpointError(
                f"model {entry.name!r}: {path} has sha256 {actual}, but {recorded} was recorded when it was "
                f"first used ({record}); the file changed. If you replaced it on purpose, delete {record}; "
                f"otherwise delete the file and download it again from {' or '.join(entry.download_urls)}"
            )
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(record, lambda tmp: tmp.write_text(f"{actual}  {entry.filename}\n"))
    except OSError as err:
        warnings.warn(f"model {entry.name!r}: could not record its sha256 in {record}: {err}", stacklevel=3)
    return True


def _missing(entry: ModelEntry, folder: Path, reason: str) -> MissingFileError:
    sha = f" (sha256 {entry.sha256})" if entry.sha256 else ""
    return MissingFileError(
        f"model {entry.name!r}: {entry.filename} is not in the model cache and was not downloaded ({reason}). "
        f"Download it from {' or '.join(entry.download_urls)}{sha} and put it at {folder / entry.filename}; "
        f"or run once with network access (HF_HUB_OFFLINE unset) to download it automatically. "
        f"The cache folder is {folder} (set ${ENV_HOME} or pass cache_dir= to use another)."
    )


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not give us the file" (offline, no network, 404, ...)."""
    errors: list[type[BaseException]] = [OSError]  # requests' and huggingface_hub's are mostly OSErrors
    try:
        from huggingface_hub import errors as hub_errors

        for name in ("EntryNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "HfHubHTTPError",
                     "RevisionNotFoundError", "RepositoryNotFoundError"):
            cls = getattr(hub_errors, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    except ImportError:  # pragma: no cover - old huggingface_hub
        pass
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _hub_unreachable() -> str:
    """Why the hub cannot be reached ("" when it can, or when a proxy is configured and the check is
    skipped). huggingface_hub retries a failed connection five times with back-off (about 25 s);
    this check fails in at most :data:`HUB_TIMEOUT_S` seconds instead."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(str(getattr(constants, "ENDPOINT", "https://huggingface.co")))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=HUB_TIMEOUT_S):
            return ""
    except OSError as err:
        return f"cannot reach {host}:{port}: {err}"


def _fetch(entry: ModelEntry, folder: Path, *, download: bool) -> Path:
    if entry.bundled:
        from medsam2kit.reference import reference_checkpoint

        return reference_checkpoint(entry.filename)
    manual = folder / entry.filename
    if manual.is_file():
        _verify(entry, manual, folder, ours=True)
        return manual
    ours = folder / "hub"
    for path in _hub_lookup(entry, ours):
        _verify(entry, path, folder, ours=True)
        return path
    default = _default_hub_cache()
    if default is not None and default.resolve() != ours.resolve():
        for path in _hub_lookup(entry, default):
            if _verify(entry, path, folder, ours=False):
                return path
    if entry.repo_id is None:
        raise _missing(entry, folder, "it is not on the Hugging Face hub")
    if hub_offline():
        raise _missing(entry, folder, "HF_HUB_OFFLINE is set")
    if not download:
        raise _missing(entry, folder, "download=False")
    from huggingface_hub import hf_hub_download

    unreachable = _hub_unreachable()
    if unreachable:
        raise _missing(entry, folder, unreachable)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        got = Path(hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision, cache_dir=ours,
                                   etag_timeout=HUB_TIMEOUT_S))
    except _hub_errors() as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise _missing(entry, folder, f"download from {entry.repo_id} failed: {type(err).__name__}: {first_line}") from err
    _verify(entry, got, folder, ours=True)
    return got


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> tuple[ModelEntry | None, Path]:
    """Find a checkpoint file by path or by zoo name (downloading it when needed and allowed).

    Args:
        name_or_path: an existing file (returned as is, with no entry), or a zoo name (or a zoo
            entry's file name, e.g. ``"MedSAM2_latest.pt"``).
        cache_dir: the model folder (default: see :func:`model_cache_dir`).
        download: allow downloading from the Hugging Face hub (``HF_HUB_OFFLINE=1`` forbids it too).

    Returns:
        ``(entry, path)``; ``entry`` is ``None`` for a file given by path.

    Raises:
        InvalidInputError: not a file and not a zoo name (the message lists the names).
        MissingFileError: a path that does not exist; or a zoo file that is not cached and cannot
            be downloaded (the message says where to download it and where to put it).
        CheckpointError: the file's sha256 is wrong (the file is removed from the model cache).

    Example:
        >>> entry, path = resolve_checkpoint("reference")
        >>> entry.name, path.name
        ('reference', 'sam2.1_hiera_micro_real.pt')
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return None, path
    entry = find_entry(text)
    if entry is None:
        if path.suffix.lower() in {".pt", ".pth", ".ckpt", ".bin"} or "/" in text or os.sep in text:
            names = [e.name for e in _entries()]
            raise MissingFileError(f"model: no checkpoint file {path} (and no model zoo entry of that name; "
                                   f"known names: {names})")
        entry = get_entry(text)  # raises the named error listing the known names
    return entry, _fetch(entry, model_cache_dir(cache_dir), download=download)


def cached_checkpoint(entry: ModelEntry, *, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The file of ``entry`` if it is already on this machine (no network, no hash check), else ``None``.

    Example:
        >>> cached_checkpoint(get_entry("reference")).suffix
        '.pt'
    """
    if entry.bundled:
        from medsam2kit.reference import reference_checkpoint

        try:
            return reference_checkpoint(entry.filename)
        except MissingFileError:
            return None
    folder = model_cache_dir(cache_dir)
    if (folder / entry.filename).is_file():
        return folder / entry.filename
    hits = _hub_lookup(entry, folder / "hub")
    default = _default_hub_cache()
    if not hits and default is not None:
        hits = _hub_lookup(entry, default)
    return hits[0] if hits else None


@dataclass(frozen=True)
class ResolvedModel:
    """Which file, config and input size a name or path stands for (see :func:`resolve_model`).

    Attributes:
        entry: the zoo entry, or ``None`` for a file given by path.
        checkpoint: the checkpoint file.
        config: the SAM2 config.
        image_size: the input size; ``None``: the config's.
        overrides: further dotted config overrides, as ``(key, value)`` pairs.
    """

    entry: ModelEntry | None
    checkpoint: Path
    config: str
    image_size: int | None
    overrides: tuple[tuple[str, Any], ...] = ()


def _choose(
    entry: ModelEntry | None,
    path: Path,
    config: str | os.PathLike[str] | None,
    image_size: int | None,
    info: Callable[[], CheckpointInfo],
) -> ResolvedModel:
    if entry is not None:
        size = image_size if image_size is not None else entry.image_size
        chosen = os.fspath(config) if config is not None else entry.config
        return ResolvedModel(entry, path, chosen, size, entry.overrides)
    if config is None:
        found = info()
        if found.config is None:
            raise ConfigError(
                f"config: cannot tell which SAM2 config {path} is for from its keys ({found.num_tensors} "
                f"tensors, SAM generation {found.generation or 'unknown'}); pass config= (e.g. "
                f"'sam2.1_hiera_t') or --config"
            )
        chosen = found.config
    else:
        chosen = os.fspath(config)
    named = find_entry(path.name)  # a zoo file given by path: its input size is the entry's
    if named is not None and config_name(chosen) == named.config:
        size = image_size if image_size is not None else named.image_size
        return ResolvedModel(None, path, chosen, size, named.overrides)
    return ResolvedModel(None, path, chosen, image_size)


def resolve_model(
    name_or_path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedModel:
    """The checkpoint file, config and input size for a zoo name or a file, without building the
    model (the rules of :func:`load_model`; a file without ``config`` is read to guess it).

    Example:
        >>> spec = resolve_model("reference")
        >>> spec.config, spec.image_size, spec.checkpoint.name
        ('sam2.1_hiera_micro', 128, 'sam2.1_hiera_micro_real.pt')
    """
    entry, path = resolve_checkpoint(name_or_path, cache_dir=cache_dir)
    return _choose(entry, path, config, image_size, lambda: inspect_checkpoint(path))


@dataclass(frozen=True)
class LoadedModel:
    """A model built by :func:`load_model`, with where its weights came from.

    Attributes:
        model: the sam2 model (eval mode, on the requested device).
        entry: the zoo entry, or ``None`` for a file given by path.
        checkpoint: the file loaded.
        config: the SAM2 config used.
        image_size: the model's input size.
        info: what was found in the file (layout, stripped prefix, dtypes, guessed config).
    """

    model: SAM2Model
    entry: ModelEntry | None
    checkpoint: Path
    config: str
    image_size: int
    info: CheckpointInfo

    def describe(self) -> str:
        """One line saying what was loaded.

        Example:
            >>> load_model("reference", device="cpu").describe()
            'bundled model reference (sam2.1_hiera_micro, 128 px; not for clinical use)'
        """
        if self.entry is not None and self.entry.bundled:
            return f"bundled model {self.entry.name} ({self.config}, {self.image_size} px; not for clinical use)"
        if self.entry is not None:
            return f"{self.entry.name} ({self.config}, {self.image_size} px) from {self.checkpoint}"
        return f"{self.checkpoint} ({self.config}, {self.image_size} px)"


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | torch.device = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Build a SAM2 model with the weights of a zoo entry or a checkpoint file (loaded strictly).

    Args:
        name_or_path: a zoo name (``medsam2kit models``) or a checkpoint file.
        config: the SAM2 config; default: the entry's, or for a file the one its keys fit
            (:func:`medsam2kit.predictor.checkpoints.guess_config`: SAM 2.0 vs 2.1, Hiera size).
        image_size: the input size; default: the entry's. For a file: the config's (1024 for
            Meta's configs), unless the file carries a zoo entry's name and fits its config
            (e.g. ``MedSAM2_latest.pt`` -> 512): weights do not record their input size.
        overrides: dotted config overrides, applied after the entry's.
        device: ``"auto"`` (cuda, then mps, then cpu) or an explicit device.
        cache_dir: the model folder (see :func:`model_cache_dir`).

    Raises:
        ConfigError: a file whose keys fit no known config, and no ``config``.
        CheckpointError: the weights do not fit the config (keys listed, fitting config
            suggested; nothing loaded); or a wrong sha256.
        MissingFileError: not cached and not downloadable (the message says where to put it).

    Example:
        >>> loaded = load_model("reference", device="cpu")
        >>> loaded.entry.name, loaded.model.image_size
        ('reference', 128)
    """
    dev = resolve_device(device)
    entry, path = resolve_checkpoint(name_or_path, cache_dir=cache_dir)
    state, info = read_checkpoint(path)
    spec = _choose(entry, path, config, image_size, lambda: info)
    merged = {**dict(spec.overrides), **(overrides or {})}
    model = build_model(spec.config, None, device="cpu", image_size=spec.image_size, overrides=merged)
    source = f"{path}" + (f" (model zoo entry {entry.name!r})" if entry is not None else "")
    load_state(model, state, source=source, config=spec.config)
    del state
    model = model.to(dev).eval()
    return LoadedModel(model=model, entry=entry, checkpoint=path, config=spec.config,
                       image_size=int(model.image_size), info=info)

__all__ = [
    "ENV_HOME",
    "HUB_TIMEOUT_S",
    "REFERENCE",
    "REFERENCE_CAROTID",
    "REFERENCE_VOLUMES",
    "REFERENCE_FETAL_HEAD",
    "REFERENCE_PHANTOMS",
    "MICRO_FINETUNE",
    "SAM2_FINETUNE",
    "FinetuneDefaults",
    "LoadedModel",
    "ModelEntry",
    "ResolvedModel",
    "cached_checkpoint",
    "expected_path",
    "file_sha256",
    "finetune_defaults",
    "find_entry",
    "get_entry",
    "hub_offline",
    "list_models",
    "load_model",
    "model_cache_dir",
    "models",
    "resolve_checkpoint",
    "resolve_model",
]
