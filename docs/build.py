"""Build the documentation site (mkdocs-material + mkdocstrings) in strict mode.

    python docs/build.py [--site-dir site]

The pages stay in docs/ next to this file; the site is built from a temporary copy to which the
command-line reference (``cli.md``, from the parsers' ``--help``) is added, so no generated file
lives in the repository. Exit code: mkdocs' (non-zero on any warning).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cli_reference() -> str:
    """Markdown of ``medsam2kit --help`` and every subcommand's ``--help``."""
    from medsam2kit.cli import _parser

    parser = _parser()
    parts = ["# Command line\n", "Generated from the parsers' `--help`.\n", "```text", parser.format_help(), "```\n"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        parts += [f"## medsam2kit {name}\n", "```text", child.format_help(), "```\n"]
    return "\n".join(parts)


def build(site_dir: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(HERE, src, ignore=shutil.ignore_patterns("build.py", "mkdocs.yml", "__pycache__"))
        (src / "cli.md").write_text(cli_reference())
        config = Path(tmp) / "mkdocs.yml"
        config.write_text(
            (HERE / "mkdocs.yml").read_text()
            + f"\ndocs_dir: {src.as_posix()!r}\nsite_dir: {site_dir.resolve().as_posix()!r}\n"
        )
        return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(config)],
                              check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site-dir", type=Path, default=Path("site"))
    return build(parser.parse_args().site_dir)


if __name__ == "__main__":
    sys.exit(main())
