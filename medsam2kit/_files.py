"""File plumbing shared by the modules: atomic writes, output checks and safe torch loads."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from medsam2kit.errors import (
    FileFormatError,
    MedSAM2KitError,
    MissingFileError,
    OutputError,
    OutputExistsError,
)


#: Marker in the names of temporary files and folders: ``.<name>.medsam2kit-tmp-<pid>-<hex>[suffix]``
#: (files written by :func:`atomic_write`) and ``.medsam2kit-tmp-<pid>-<hex>`` (folders of
#: :func:`staged_folder`). A killed run leaves them behind; :func:`clean_stale_temporaries`
#: removes them on the next run into the same folder.
TEMP_MARKER = "medsam2kit-tmp-"
_TEMP_RE = re.compile(r"^\.(?:.*\.)?medsam2kit-tmp-(?P<pid>\d+)-[0-9a-f]{12}(?:\..*)?$", re.DOTALL)
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TEMP_NAME_MAX = 120  # characters of the destination's name kept in a temporary name


def temp_path(dest: str | os.PathLike[str], *, suffix: str = ".tmp") -> Path:
    """A fresh, recognisable temporary name beside ``dest`` (see :data:`TEMP_MARKER`).

    Example:
        >>> temp_path("out/mask.nii.gz", suffix=".tmp.nii.gz").name.startswith(".mask.nii.gz.medsam2kit-tmp-")
        True
    """
    target = Path(dest)
    return target.with_name(
        f".{target.name[:_TEMP_NAME_MAX]}.{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}{suffix}"
    )


def one_line(err: BaseException) -> str:
    """An exception's text as one clean line: terminal colour codes removed, lines joined.

    Example:
        >>> one_line(RuntimeError("\\x1b[1mbad\\x1b[0m\\n  file"))
        'bad; file'
    """
    text = _ANSI_RE.sub("", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return str(err.strerror)
    return one_line(err)


def _is_write_error(err: BaseException) -> bool:
    """OSError, or torch's RuntimeError for a file it could not open or write."""
    if isinstance(err, MedSAM2KitError):
        return False
    if isinstance(err, OSError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        key in text for key in ("PytorchStreamWriter", "inline_container", "cannot be opened", "Parent directory")
    )


def _existing_ancestor(path: Path) -> Path:
    base = path
    while not os.path.lexists(base) and base != base.parent:
        base = base.parent
    return base


def _check_parent(target: Path, name: str) -> None:
    """The folder of ``target`` must exist (MissingFileError) and be a folder (OutputError)."""
    if os.path.isdir(target.parent):
        return
    base = _existing_ancestor(target.parent)
    if os.path.lexists(base) and not os.path.isdir(base):
        raise OutputError(f"{name}: cannot write {target}: {base} is a file, not a folder")
    raise MissingFileError(f"{name}: the folder {target.parent} does not exist (writing {target.name})")


def _probe(tmp: Path, target: Path, name: str, *, where: str = "") -> None:
    """Create and remove the empty file ``tmp``: an :class:`OutputError` naming ``target`` when the
    folder does not take new files (read-only, full, a name the file system refuses)."""
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(tmp)
    except OSError as err:
        raise OutputError(f"{name}: cannot write {target}: {_reason(err)}{where}") from err


def atomic_write(
    dest: str | os.PathLike[str], write: Callable[[Path], object], *, suffix: str = ".tmp", name: str = "path"
) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``dest``, then rename it to ``dest``.

    On any failure (including an interrupt) the temporary file is removed and ``dest`` is left as
    it was: never a partial file. ``suffix`` ends the temporary name (some writers choose the
    format from it, e.g. ``.nii.gz``). The temporary name is recognisable (:func:`temp_path`),
    so one left by a killed process is removed by :func:`clean_stale_temporaries`.

    Raises:
        MissingFileError: the folder of ``dest`` does not exist.
        OutputError: the file cannot be written (an unwritable or read-only folder, a file where
            the folder should be, a name the file system refuses, a full disk); names ``dest``.

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "a.txt", lambda t: t.write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    target = Path(dest)
    _check_parent(target, name)
    tmp = temp_path(target, suffix=suffix)
    _probe(tmp, target, name)  # fails early and clearly
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - the folder vanished
            pass
        if _is_write_error(err):
            raise OutputError(f"{name}: cannot write {target}: {_reason(err)}") from err
        raise
    return target


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows: rely on the age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def clean_stale_temporaries(
    folder: str | os.PathLike[str], *, min_age_s: float = 60.0, max_age_s: float = 86400.0
) -> list[Path]:
    """Remove the temporary files (and staging folders) that killed runs left in ``folder``.

    Only entries named by :func:`temp_path` or :func:`staged_folder` (see :data:`TEMP_MARKER`)
    are candidates, and only when older than ``min_age_s`` and either their process (the pid in
    the name) is no longer running on this machine or they are older than ``max_age_s``. Never
    raises: entries that cannot be removed are left alone.

    Returns:
        The paths removed.

    Example:
        >>> import tempfile, pathlib
        >>> clean_stale_temporaries(pathlib.Path(tempfile.mkdtemp()))
        []
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.lstat().st_mtime
            if age < min_age_s or (age < max_age_s and _pid_alive(int(match["pid"]))):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


def check_writable(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    folder: bool = False,
    contents: Sequence[str] = (),
    name: str = "path",
    hint: str = "pass overwrite=True to replace it",
) -> Path:
    """Check, before any work, that an output can be written; cleans stale temporaries there.

    Args:
        path: the output file, or with ``folder=True`` the output folder (it may not exist yet:
            it and missing parents are created by the writer).
        overwrite: whether an existing output may be replaced.
        folder: ``path`` is a folder.
        contents: with ``folder=True``, the names (relative to ``path``) the command will write;
            existing ones are refused unless ``overwrite``.
        name: the argument name, for messages (``"--out"``).
        hint: what the refusal of an existing output suggests (``"add --overwrite to replace it"``).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        MissingFileError: the folder of an output file does not exist.
        OutputExistsError: the output (or one of ``contents``) exists and ``overwrite`` is false.
        OutputError: a file where a folder is needed (or the reverse), an unwritable folder, a
            name the file system refuses.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> check_writable(d / "mask.nii.gz", overwrite=False).name
        'mask.nii.gz'
    """
    target = Path(path)
    if folder:
        if os.path.lexists(target) and not os.path.isdir(target):
            raise OutputError(f"{name}: expected a folder, got the file {target}")
        base = _existing_ancestor(target)
        if not os.path.isdir(base):
            raise OutputError(f"{name}: cannot write {target}: {base} is a file, not a folder")
        existing = [target / c for c in contents if os.path.lexists(target / c)] if base == target else []
        if existing and not overwrite:
            shown = ", ".join(str(p) for p in existing[:5]) + (" ..." if len(existing) > 5 else "")
            raise OutputExistsError(f"{name}: {shown} already exist(s); {hint}")
        probe_dir, probe_name = base, "probe"
    else:
        if os.path.isdir(target):
            raise OutputError(f"{name}: {target} is a folder, expected a file name")
        _check_parent(target, name)
        if os.path.lexists(target) and not overwrite:
            raise OutputExistsError(f"{name}: {target} already exists; {hint}")
        probe_dir, probe_name = target.parent, target.name
        limit = _name_max(probe_dir)
        if limit is not None and len(os.fsencode(target.name)) > limit:
            raise OutputError(f"{name}: cannot write {target}: the file name is longer than {limit} bytes")
    if _base_is_output(probe_dir, target, folder):
        clean_stale_temporaries(probe_dir)
    where = "" if probe_dir in (target, target.parent) else f" (in {probe_dir})"
    _probe(temp_path(probe_dir / probe_name), target, name, where=where)
    return target


def _base_is_output(probe_dir: Path, target: Path, folder: bool) -> bool:
    """Whether ``probe_dir`` is the output's own folder (where stale temporaries are cleaned)."""
    return probe_dir == (target if folder else target.parent)


def _name_max(folder: Path) -> int | None:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return None


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str], *, name: str = "out") -> Iterator[Path]:
    """Write a command's outputs into a hidden temporary folder; move them into ``folder`` only
    when the block succeeds.

    On success every file of the staging folder is moved (``os.replace``) to the same relative
    path in ``folder``; on any failure nothing is moved, the staging folder is removed and so is
    ``folder`` when it was created here and is empty: a failed command leaves no output.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "eval"
        >>> with staged_folder(out) as stage:
        ...     _ = (stage / "a.csv").write_text("x")
        >>> sorted(p.name for p in out.iterdir())
        ['a.csv']
    """
    target = Path(folder)
    created = [p for p in [target, *target.parents] if not os.path.lexists(p)]
    try:
        target.mkdir(parents=True, exist_ok=True)
        stage = target / f".{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"
        stage.mkdir()
    except OSError as err:
        raise OutputError(f"{name}: cannot write {target}: {_reason(err)}") from err
    try:
        yield stage
        try:
            for src in sorted(p for p in stage.rglob("*") if p.is_file()):
                dst = target / src.relative_to(stage)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
        except OSError as err:
            raise OutputError(f"{name}: cannot write {target}: {_reason(err)}") from err
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for p in created:  # innermost first: only the folders made here, and only when empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(stage, ignore_errors=True)


def load_torch(path: str | os.PathLike[str], *, what: str, name: str = "path") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    A file holding Python objects other than tensors, numbers, strings and containers is refused
    for safety, in one line naming the file (it is never unpickled).

    Args:
        path: the file.
        what: what the file should be, for messages ("checkpoint", "support bank", ...).
        name: the argument name, for messages.

    Raises:
        MissingFileError: no such file.
        FileFormatError: not a torch file, damaged, or holding other objects than tensors.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.pt"
        >>> torch.save({"a": torch.ones(1)}, p)
        >>> load_torch(p, what="tensor file")["a"].tolist()
        [1.0]
    """
    src = Path(path)
    if not src.is_file():
        raise MissingFileError(f"{name}: {what} not found: {src}")
    try:
        return torch.load(src, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (pickle, zip, unpickling policy) for bad files
        text = str(err).lower()
        if isinstance(err, pickle.UnpicklingError) and "weights only" in text and "unsupported global" in text:
            raise FileFormatError(
                f"{name}: {src} holds Python objects other than tensors, numbers, strings and containers; "
                f"refused for safety (a {what} must hold tensors only)"
            ) from err
        if isinstance(err, pickle.UnpicklingError) and "weights only" in text:  # e.g. a NIfTI given as a model
            raise FileFormatError(f"{name}: {src} is not a {what} (not a torch file: it cannot be unpickled)") from err
        raise FileFormatError(f"{name}: {src} is not a readable {what}: {one_line(err)}") from err


# --------------------------------------------------------------------------------------------
# Case names: the one rule every command uses to pair files and to name its outputs
# --------------------------------------------------------------------------------------------

#: File endings read as images or label maps (a DICOM series is a folder of ``.dcm`` files).
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".npz", ".dcm")

#: Role suffixes of image files (``hippocampus_184_img.nii.gz``).
IMAGE_ROLES: tuple[str, ...] = ("_img", "_image")

#: Role suffixes of label maps: references and predictions (``hippocampus_184_label.nii.gz``).
LABEL_ROLES: tuple[str, ...] = ("_labels", "_label", "_seg", "_mask", "_pred", "_gt")

#: The suffix of every label map that ``segment``/``fewshot`` write into an output folder.
OUTPUT_SUFFIX = "_labels.nii.gz"


def split_case(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(case, role)`` of a file name: the rule that pairs images, references and predictions.

    The case name is the file name without its extension (:data:`IMAGE_EXTENSIONS`, matched
    case-insensitively) and without trailing role suffixes (:data:`IMAGE_ROLES`,
    :data:`LABEL_ROLES`), removed repeatedly so that older outputs such as
    ``a_img_labels.nii.gz`` still pair with ``a_label.nii.gz``. ``role`` is ``"image"``,
    ``"label"`` (decided by the last suffix) or ``""`` (no role suffix: either). A name that is
    only a role suffix keeps it as its case name.

    Example:
        >>> split_case("hippocampus_184_img.nii.gz"), split_case("c7_img_labels.nii.gz"), split_case("x.nrrd")
        (('hippocampus_184', 'image'), ('c7', 'label'), ('x', ''))
    """
    name = Path(path).name
    for ext in IMAGE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    role = ""
    stripped = True
    while stripped:
        stripped = False
        for suffix, kind in [(s, "image") for s in IMAGE_ROLES] + [(s, "label") for s in LABEL_ROLES]:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name, role, stripped = name[: -len(suffix)], role or kind, True
                break
    return name, role


def case_name(path: str | os.PathLike[str]) -> str:
    """The case a file belongs to (see :func:`split_case`).

    Example:
        >>> case_name("hippocampus_199_label.nii.gz"), case_name("hippocampus_199_img.nii.gz")
        ('hippocampus_199', 'hippocampus_199')
    """
    return split_case(path)[0]


def output_name(path: str | os.PathLike[str]) -> str:
    """The file name ``segment``/``fewshot`` give the label map of an input in an output folder.

    Example:
        >>> output_name("cohort/hippocampus_184_img.nii.gz")
        'hippocampus_184_labels.nii.gz'
    """
    return case_name(path) + OUTPUT_SUFFIX


def index_cases(folder: str | os.PathLike[str], *, role: str, name: str) -> dict[str, Path]:
    """``{case: file}`` of the image (``role="image"``) or label-map (``role="label"``) files in a folder.

    Files with one of :data:`IMAGE_EXTENSIONS` count; those whose role suffix says they are the
    other kind are skipped (a folder may hold ``a_img.nii.gz`` beside ``a_label.nii.gz``); with
    ``role="image"`` sub-folders holding ``.dcm`` files are DICOM series named by the folder.

    Args:
        folder: the folder.
        role: ``"image"`` or ``"label"``.
        name: the argument name, for messages.

    Raises:
        InvalidInputError: two files of the folder name the same case (both named).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for f in ("a_img.nii.gz", "a_label.nii.gz", "notes.txt"):
        ...     _ = (d / f).write_text("")
        >>> [p.name for p in index_cases(d, role="label", name="GT").values()]
        ['a_label.nii.gz']
    """
    from medsam2kit.errors import InvalidInputError

    if role not in ("image", "label"):
        raise InvalidInputError(f"role: expected 'image' or 'label', got {role!r}")
    other = "label" if role == "image" else "image"
    found: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_dir():
            if role != "image" or not any(q.suffix.lower() == ".dcm" for q in p.iterdir()):
                continue
        elif not p.name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        case, kind = split_case(p)
        if kind == other:
            continue
        if case in found:
            raise InvalidInputError(
                f"{name}: {found[case].name} and {p.name} in {folder} both name the case {case!r} "
                "(case name = file name without extension and role suffix such as _img or _label); "
                "rename or move one"
            )
        found[case] = p
    return found
