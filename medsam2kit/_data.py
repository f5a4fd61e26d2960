"""Where the optional real data for tests, examples and benchmarks lives (never bundled)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MEDSAM2KIT_DATA"


def shared_data_dir(start: Path | None = None) -> Path | None:
    """The folder of real labelled cases, or ``None`` when it is absent.

    Looks at ``$MEDSAM2KIT_DATA`` first, then at ``../shared/data`` beside the project root
    (the folder holding ``pyproject.toml`` above ``start``, default: the current directory).

    Example:
        >>> p = shared_data_dir()
        >>> p is None or p.is_dir()
        True
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    here = (start or Path.cwd()).resolve()
    for root in (here, *here.parents):
        if (root / "pyproject.toml").is_file():
            candidate = root.parent / "shared" / "data"
            return candidate if candidate.is_dir() else None
    return None
