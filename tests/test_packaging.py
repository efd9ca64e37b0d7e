"""Set-up promises: pyproject and environment.yml agree, the README's two commands exist and
CI runs the second, every notebook has an Open-in-Colab link."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
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
