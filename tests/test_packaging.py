"""Set-up promises: pyproject and environment.yml agree, the README's two commands exist and
CI runs the second, every notebook has an Open-in-Colab link."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _course_extras(project) -> set[str]:
    """Every requirement of the dev extra, its references to the course's own extras
    ("resilient-ai-workbench[lm,redteam,lab]") replaced by what those extras list."""
    extras = project["optional-dependencies"]
    found = set()
    for requirement in extras["dev"]:
        if requirement.startswith(f"{project['name']}["):
            names = requirement.split("[", 1)[1].rstrip("]").split(",")
            found |= {r for name in names for r in extras[name]}
        else:
            found.add(requirement)
    return found


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | _course_extras(project)
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]
    listed = {line.strip()[2:] for line in pip_section.splitlines()
              if line.strip().startswith("- ") and line.strip() != "- -e ."}
    assert listed == wanted, (listed - wanted, wanted - listed)
    assert "python=3.11" in text and "- -e ." in text


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(bash dev\.sh [a-z]+)\n```", readme)


def test_readme_has_the_lab_and_test_commands_and_ci_runs_the_test_one():
    assert _readme_commands() == ["bash dev.sh lab", "bash dev.sh test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nbash dev.sh test\n" in ci


def test_dev_script_creates_the_venv_and_installs_with_the_pins():
    script = (ROOT / "dev.sh").read_text()
    assert "-m venv .venv" in script
    assert '-c constraints.txt -e ".[dev]"' in script
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==\S+$", pins, re.M) and re.search(r"^torchvision==\S+$", pins, re.M)


def test_colab_link_for_every_notebook_and_ipywidgets_range():
    readme = (ROOT / "README.md").read_text()
    repo = _pyproject()["project"]["urls"]["Repository"].removeprefix("https://github.com/")
    for master in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        link = (f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/student/"
                f"{master.stem}.ipynb")
        assert link in readme, link
        assert f"git+https://github.com/{repo}" in master.read_text()
    assert "ipywidgets>=7.6,<9" in _pyproject()["project"]["dependencies"]


def test_the_distribution_name_and_repository_are_in_one_place():
    """pyproject.toml, the README and every notebook's install cell use the name and the URL
    of workbench.notebooks (PyPI's "workbench" is an unrelated project)."""
    from workbench.notebooks import DISTRIBUTION, REPOSITORY, install_cell

    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION != "workbench"
    assert project["urls"]["Repository"] == REPOSITORY
    readme = (ROOT / "README.md").read_text()
    github = set(re.findall(r"(?:github\.com|\.com/github)/([\w.-]+/[\w.-]+)", readme))
    assert github == {REPOSITORY.removeprefix("https://github.com/")}, github
    for master in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert install_cell(master.stem) in master.read_text(), (
            f"{master.name}: run `workbench build`, which writes its install cell")


def test_install_cells_install_the_course_package_only_and_upgrade_nothing():
    """What Colab ships stays: no --upgrade, one pip call, only the course package (with the
    extras that notebook needs); and the package's own requirements accept Colab's torch,
    torchvision and ipywidgets (lower bounds only; ipywidgets 7 or 8) and leave TensorFlow,
    keras-hub and alt-profanity-check's pinned scikit-learn to the notebooks that need them."""
    from workbench.notebooks import DISTRIBUTION, REPOSITORY, install_cell

    for stem in ("00_setup", "01_shieldgemma", "04_lat", "05_lat_llm", "06_redteam"):
        cell = install_cell(stem)
        assert cell.count('"pip", "install"') == 1 and "--upgrade" not in cell and " -U" not in cell
        (package,) = re.findall(r'PACKAGE = "([^"]+)"', cell)
        name, url = package.split(" @ ")
        assert re.fullmatch(rf"{DISTRIBUTION}(\[[a-z,]+\])?", name) and url == f"git+{REPOSITORY}"
        assert "print(install.stdout" in cell  # pip's output when it fails
    assert "[lm]" in install_cell("01_shieldgemma") and "[" not in install_cell("04_lat").split(
        "PACKAGE")[1].split("\n")[0]
    core = _pyproject()["project"]["dependencies"]
    for package in ("torch", "torchvision", "ipywidgets"):
        (spec,) = [r for r in core if re.match(rf"{package}[<>=]", r)]
        assert "==" not in spec and "<" not in spec.replace("<9", ""), spec
    assert not [r for r in core if re.match(r"(keras|tensorflow|alt-profanity)", r)]


def test_the_readme_shows_a_screenshot_of_every_panel_the_browser_tests_drive():
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\((docs/screenshots/[\w.-]+\.png)\)", readme)
    assert pictures, "no screenshots in the README"
    for picture in pictures:
        data = (ROOT / picture).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, picture
    browser_tests = (ROOT / "tests" / "test_browser.py").read_text()
    driven = set(re.findall(r"notebooks/solutions/(\d\d_\w+)\.ipynb", browser_tests))
    shown = {Path(p).stem for p in pictures}
    assert driven <= shown, driven - shown


def test_the_test_command_runs_every_test_once_in_two_halves():
    """dev.sh test runs the tests that neither run a notebook nor drive the browser on two
    workers, then those that do, alone: the two marker expressions split the suite in two
    with nothing left out, since those two are the only markers."""
    script = (ROOT / "dev.sh").read_text()
    assert '-n 2 --dist loadfile \\\n      -m "not notebook and not browser"' in script
    assert '.venv/bin/python -m pytest -m "notebook or browser"' in script
    markers = [m.split(":")[0] for m in _pyproject()["tool"]["pytest"]["ini_options"]["markers"]]
    assert markers == ["notebook", "browser"]
    assert any(r.startswith("pytest-xdist") for r in
               _pyproject()["project"]["optional-dependencies"]["dev"])
