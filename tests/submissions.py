"""A class's worth of notebook 02 submissions, honest and hostile, for the grader's tests.

``write_class(folder)`` writes them and returns, per file name, the gradebook row the grader
must give it: its status and, per exercise, whether every check passes.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

IMPORTS = "import torch\nimport torch.nn.functional as F"

# Correct, and leaning on what earlier cells define: a module constant, a helper, `device`.
CONTEXT = ("device = torch.device('cpu')\n"
           "PIXEL_RANGE = (0.0, 1.0)\n\n"
           "def loss_of(model, x, y):\n"
           "    return F.cross_entropy(model(x), y)")
FGSM = ("def fgsm(model, x, y, eps, *, targeted=False):\n"
        "    x_adv = x.clone().detach().to(device).requires_grad_(True)\n"
        "    (grad,) = torch.autograd.grad(loss_of(model, x_adv, y), x_adv)\n"
        "    step = eps * grad.sign()\n"
        "    return (x - step if targeted else x + step).clamp(*PIXEL_RANGE).detach()")
SWEEP = ("def sweep_eps(model, x, y, epsilons, attack):\n"
         "    accuracy, confidence = [], []\n"
         "    for eps in epsilons:\n"
         "        x_adv = attack(model, x, y, eps)\n"
         "        with torch.no_grad():\n"
         "            probs = model(x_adv).softmax(dim=1)\n"
         "        accuracy.append((probs.argmax(dim=1) == y).float().mean().item())\n"
         "        confidence.append(probs.gather(1, y[:, None]).mean().item())\n"
         "    return torch.tensor(accuracy), torch.tensor(confidence)")

WRONG_FGSM = ("def fgsm(model, x, y, eps, *, targeted=False):\n"
              "    x_adv = x.clone().requires_grad_(True)\n"
              "    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)\n"
              "    return (x + eps * grad.sign()).detach()  # no clamp, no targeted")
WRONG_SWEEP = SWEEP.replace(".float().mean().item()", ".float().mean().item() * 100")

DELEGATING_FGSM = ("from workbench.attacks import fgsm as package_fgsm\n\n"
                   "def fgsm(model, x, y, eps, *, targeted=False):\n"
                   "    return package_fgsm(model, x, y, eps, targeted=targeted)")
DELEGATING_SWEEP = ("import workbench.defenses.evaluation as evaluation\n\n"
                    "def sweep_eps(model, x, y, epsilons, attack):\n"
                    "    return evaluation.accuracy_and_confidence_curve(model, x, y, epsilons, "
                    "attack)")

# The forging answers of issue 10: a class body and a default argument that, in the old
# grader's process, switched the checks off or wrote a passing result and left.
FORGING_CLASS = ("import json, glob, os, tempfile\n"
                 "import workbench.exercises.core as core\n\n"
                 "class Sneaky:\n"
                 "    core.run_checks_list = lambda name, checks, fn, **k: [\n"
                 "        core.CheckResult(name, d, True) for d, _ in checks]\n"
                 "    for f in glob.glob(tempfile.gettempdir() + '/workbench-*/**/*.json',\n"
                 "                       recursive=True):\n"
                 "        open(f, 'w').write('[]')\n\n"
                 + WRONG_FGSM)
FORGING_DEFAULT = ("import os\n\n"
                   "def fgsm(model, x, y, eps, *, targeted=False,\n"
                   "         _=open('../gradebook.csv', 'w').write('all passed') and "
                   "os._exit(0)):\n"
                   "    return x")
HANG = ("def fgsm(model, x, y, eps, *, targeted=False):\n"
        "    while True:\n"
        "        pass")
SYS_EXIT = ("import sys\n\n"
            "def fgsm(model, x, y, eps, *, targeted=False):\n"
            "    sys.exit(0)")
OS_EXIT = ("import os\n\n"
           "def sweep_eps(model, x, y, epsilons, attack):\n"
           "    os._exit(3)")
DELETES_FILES = ("import os\n"
                 "os.remove('data.txt')\n"
                 "open('notes.txt', 'w').write('overwritten by a submission')")
RAISES = ("def fgsm(model, x, y, eps, *, targeted=False):\n"
          "    x_adv = x.clone()\n"
          "    return x_adv + eps * undefined_name")


def notebook(*cells: str) -> nbformat.NotebookNode:
    """A notebook claiming to be 02_fgsm (as the student version does), of these code cells."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["workbench"] = {"notebook": "02_fgsm"}
    return nb


SUBMISSIONS = {
    "correct.ipynb": notebook(IMPORTS, CONTEXT, FGSM, SWEEP),
    "wrong.ipynb": notebook(IMPORTS, WRONG_FGSM, WRONG_SWEEP),
    "delegates.ipynb": notebook(IMPORTS, DELEGATING_FGSM, DELEGATING_SWEEP),
    "forges_in_class_body.ipynb": notebook(IMPORTS, FORGING_CLASS, SWEEP),
    "forges_in_default.ipynb": notebook(IMPORTS, FORGING_DEFAULT, SWEEP),
    "hangs.ipynb": notebook(IMPORTS, HANG, SWEEP),
    "exits.ipynb": notebook(IMPORTS, SYS_EXIT, OS_EXIT),
    "raises.ipynb": notebook(IMPORTS, CONTEXT, RAISES, SWEEP),
    "deletes_files.ipynb": notebook(IMPORTS, DELETES_FILES, CONTEXT, FGSM, SWEEP),
}

# status, and per exercise: True when every check passes
EXPECTED = {
    "correct.ipynb": ("graded", {"fgsm": True, "sweep_eps": True}),
    "wrong.ipynb": ("graded", {"fgsm": False, "sweep_eps": False}),
    "delegates.ipynb": ("graded", {"fgsm": False, "sweep_eps": False}),
    "forges_in_class_body.ipynb": ("graded", {"fgsm": False, "sweep_eps": True}),
    "forges_in_default.ipynb": ("graded", {"fgsm": False, "sweep_eps": False}),
    "hangs.ipynb": ("graded", {"fgsm": False, "sweep_eps": True}),
    "exits.ipynb": ("graded", {"fgsm": False, "sweep_eps": False}),
    "raises.ipynb": ("graded", {"fgsm": False, "sweep_eps": True}),
    "deletes_files.ipynb": ("graded", {"fgsm": True, "sweep_eps": True}),
    "empty.ipynb": ("empty", {}),
    "not_a_notebook.ipynb": ("not a notebook", {}),
}


def write_class(folder: Path) -> dict:
    """Write every submission into ``folder``, with the files a learner keeps beside them (a
    data file, notes, and a ``random.py`` that shadows the standard module); returns
    :data:`EXPECTED`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, nb in SUBMISSIONS.items():
        nbformat.write(nb, folder / name)
    (folder / "empty.ipynb").write_text("")
    (folder / "not_a_notebook.ipynb").write_text('{"cells": "no", "hello": 1}')
    (folder / "data.txt").write_text("the learner's data")
    (folder / "notes.txt").write_text("the instructor's notes")
    (folder / "random.py").write_text("raise ImportError('the local random.py was imported')\n")
    return EXPECTED
