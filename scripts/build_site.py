"""Build the course website with Jupyter Book from the executed notebooks: what `make site` runs.

    python scripts/build_site.py            # build/site/_build/html/index.html
    python scripts/build_site.py --strict   # warnings are errors (CI)

The notebooks are shown as committed (executed, validated by nbval), never
re-executed: site/_config.yml turns execution off. The table of contents, the
syllabus the site shows as its navigation, is written here from the files
themselves: the intro page (site/intro.md), then every lesson in notebooks/ and
every exercise notebook in exercises/, in lesson order, so a new lesson appears
without editing a list. The book's source folder is the repository (the pages
link to each other by their paths there, e.g. a lesson to its exercises); only
the files in the table of contents are built.

Jupyter Book 1.x (Sphinx) is used: Jupyter Book 2 (mystmd) downloads its HTML
theme from the internet at build time, and a build must need nothing beyond
the installed packages.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "site"  # the HTML lands in OUT / "_build" / "html"


def lesson_files(folder: Path) -> list[Path]:
    """The lesson notebooks of ``folder`` (NN_name.ipynb), in lesson order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb") if p.is_file())


def toc_text(root: Path = ROOT) -> str:
    """The _toc.yml of the site: the intro page, a part of lessons, a part of exercises."""
    lines = ["# Written by scripts/build_site.py from notebooks/ and exercises/: do not edit.",
             "format: jb-book", "root: site/intro", "parts:"]
    for caption, folder in (("Lessons", "notebooks"), ("Exercises", "exercises")):
        files = lesson_files(root / folder)
        if files:
            lines += [f"  - caption: {caption}", "    chapters:"]
            lines += [f"      - file: {folder}/{p.stem}" for p in files]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--strict", action="store_true", help="warnings are errors (-W), as in CI")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if jb is None:
        print("build_site: jupyter-book is not installed: pip install -e '.[site]' (make site does it)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    toc = args.out / "_toc.yml"
    toc.write_text(toc_text())
    cmd = [jb, "build", str(ROOT), "--builder", "html", "--config", str(ROOT / "site" / "_config.yml"),
           "--toc", str(toc), "--path-output", str(args.out)]
    if args.strict:
        cmd += ["-W", "-n", "--keep-going"]
    start = time.perf_counter()
    status = subprocess.call(cmd, cwd=ROOT)
    index = args.out / "_build" / "html" / "index.html"
    print(f"build_site: {'built' if status == 0 else 'FAILED'} in {time.perf_counter() - start:.0f} s"
          + (f": open {index}" if status == 0 else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
