"""File plumbing shared by the modules: atomic writes and safe torch loads."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medsam2kit.errors import FileFormatError, MissingFileError


def atomic_write(dest: str | os.PathLike[str], write: Callable[[Path], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``dest``, then rename it to ``dest``.

    On any failure (including an interrupt) the temporary file is removed and ``dest`` is left as
    it was: never a partial file. ``suffix`` ends the temporary name (some writers choose the
    format from it, e.g. ``.nii.gz``).

    Example:
        >>> import tempfile, pathlib
        >>> p = atomic_write(pathlib.Path(tempfile.mkdtemp()) / "a.txt", lambda t: t.write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    target = Path(dest)
    if not target.parent.is_dir():
        raise MissingFileError(f"path: the folder {target.parent} does not exist (writing {target.name})")
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def load_torch(path: str | os.PathLike[str], *, what: str, name: str = "path") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    Args:
        path: the file.
        what: what the file should be, for messages ("checkpoint", "support bank", ...).
        name: the argument name, for messages.

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
        raise FileFormatError(f"{name}: {src} is not a readable {what}: {err}") from err
