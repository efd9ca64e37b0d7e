"""Notebook 03 part B: the digits split, AdvProp's dual BN, the three training loops, the
evaluation helpers, the cached experiment and its command.

The full experiment (3 methods x 3 seeds) runs once per session, into the suite's cache, which
the command-line test then reads; everything else trains on small subsets for an epoch or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import workbench.experiments as experiments
from workbench.cli import main as cli_main
from workbench.data import load_digits_split
from workbench.defenses import (
    METHODS,
    DualBatchNorm2d,
    accuracy,
    advprop_loss,
    auxiliary_bn,
    digits_cnn,
    robust_accuracy,
    robustness_curve,
    train,
    train_advprop,
    train_pgd_at,
    train_standard,
    transfer_accuracy,
)
from workbench.defenses.models import DIGITS_MEAN, DIGITS_STD
from workbench.experiments import cache_path, run_advprop_experiment, train_or_load

TINY = {"epochs": 1, "steps": 2}  # hyper-parameters for training that only has to run


@pytest.fixture(scope="session")
def digits():
    return load_digits_split()


@pytest.fixture(scope="session")
def subset(digits):
    """256 training images, for loops that only have to run."""
    x_train, y_train, _, _ = digits
    return x_train[:256], y_train[:256]


@pytest.fixture(scope="session")
def experiment():
    """The full experiment, once, in the suite's cache (``$WORKBENCH_CACHE``): notebook 03,
    run after these tests (dev.sh's second half), reads its models and result there instead
    of training them a second time."""
    return run_advprop_experiment()


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    return tmp_path


def bn_stats(model):
    """Copies of the running means of every main and auxiliary BN, in module order."""
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    return ([layer.main.running_mean.clone() for layer in layers],
            [layer.aux.running_mean.clone() for layer in layers])


def changed(before, after):
    return [not torch.equal(b, a) for b, a in zip(before, after)]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- data


def test_digits_split_shapes_dtypes_and_range(digits):
    x_train, y_train, x_test, y_test = digits
    assert x_train.shape == (1347, 1, 16, 16) and x_test.shape == (450, 1, 16, 16)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() <= 1.0
    assert set(y_train.tolist()) == set(y_test.tolist()) == set(range(10))


def test_digits_at_size_8_are_the_original_values_over_16():
    from sklearn.datasets import load_digits

    x_train, _, x_test, _ = load_digits_split(size=8)
    original = {img.tobytes() for img in (load_digits().images / 16.0).astype(np.float32)}
    assert all(img[0].numpy().tobytes() in original for img in torch.cat([x_train, x_test]))


def test_digits_split_is_deterministic_and_seeded():
    first, again, other = (load_digits_split(seed=s) for s in (0, 0, 1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_digits_split_is_stratified():
    _, y_train, _, y_test = load_digits_split(test_fraction=0.2, seed=3)
    train_counts, test_counts = torch.bincount(y_train), torch.bincount(y_test)
    share = test_counts.float() / (train_counts + test_counts).float()
    assert len(y_test) == 360 and ((share - 0.2).abs() < 0.01).all()


@pytest.mark.parametrize("kwargs", [{"size": 4}, {"size": 0}, {"size": 16.5}, {"size": True},
                                    {"test_fraction": 0}, {"test_fraction": 1},
                                    {"test_fraction": -0.1}, {"test_fraction": "0.2"}])
def test_digits_split_rejects_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        load_digits_split(**kwargs)


# ----------------------------------------------------------------------------- model


def test_normalisation_constants_are_the_training_split_statistics(digits):
    x_train = digits[0]
    assert DIGITS_MEAN == pytest.approx(x_train.mean().item(), abs=1e-6)
    assert DIGITS_STD == pytest.approx(x_train.std().item(), abs=1e-6)


def test_digits_cnn_contract(digits):
    model = digits_cnn()
    assert model.categories == [str(i) for i in range(10)] and model.input_size == (1, 16, 16)
    assert model.name == "digits_cnn" and model.mode == "lite" and model.source
    assert model(digits[2][:5]).shape == (5, 10)


def test_digits_cnn_init_is_seeded_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    assert same_weights(digits_cnn(seed=3), digits_cnn(seed=3))
    assert not same_weights(digits_cnn(seed=3), digits_cnn(seed=4))
    assert torch.equal(state, torch.random.get_rng_state())


def test_dual_bn_model_has_only_dual_bn_and_the_same_shared_weights():
    plain, dual = digits_cnn(seed=5), digits_cnn(dual_bn=True, seed=5)
    duals = [m for m in dual.modules() if isinstance(m, DualBatchNorm2d)]
    inner = {id(m) for d in duals for m in (d.main, d.aux)}
    plain_bns = [m for m in dual.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in inner]
    assert len(duals) == 2 and not plain_bns
    shared = [[m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
              for model in (plain, dual)]
    assert len(shared[0]) == 3 and all(map(torch.equal, *shared))


# ----------------------------------------------------------------------------- AdvProp


def test_dual_bn_routes_running_statistics(digits):
    model = digits_cnn(dual_bn=True).train()
    x = digits[0][:32]
    main, aux = bn_stats(model)
    with torch.no_grad():
        model(x)
    main_after, aux_after = bn_stats(model)
    assert all(changed(main, main_after)) and not any(changed(aux, aux_after))
    with torch.no_grad(), auxiliary_bn(model):
        model(x)
    main_final, aux_final = bn_stats(model)
    assert not any(changed(main_after, main_final)) and all(changed(aux_after, aux_final))


def test_auxiliary_bn_restores_flags_also_on_error_and_when_nested():
    model = digits_cnn(dual_bn=True)
    layers = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    with pytest.raises(RuntimeError, match="boom"):
        with auxiliary_bn(model):
            assert all(layer.use_aux for layer in layers)
            raise RuntimeError("boom")
    assert not any(layer.use_aux for layer in layers)
    layers[0].use_aux = True
    with auxiliary_bn(model):
        with auxiliary_bn(model):
            pass
        assert all(layer.use_aux for layer in layers)
    assert [layer.use_aux for layer in layers] == [True, False]


def test_advprop_loss_is_clean_main_plus_adversarial_aux(digits):
    model = digits_cnn(dual_bn=True, seed=1).eval()  # eval: running stats fixed across calls
    with torch.no_grad():  # give the two BNs different statistics
        for layer in (m for m in model.modules() if isinstance(m, DualBatchNorm2d)):
            layer.aux.running_mean.add_(0.5)
    x, y = digits[0][:16], digits[1][:16]
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    clean = F.cross_entropy(model(x), y)
    with auxiliary_bn(model):
        adversarial = F.cross_entropy(model(x_adv), y)
    loss = advprop_loss(model, x, x_adv, y)
    assert loss.item() == pytest.approx((clean + adversarial).item(), rel=1e-6)
    assert loss.item() != pytest.approx(
        (clean + F.cross_entropy(model(x_adv), y)).item(), rel=1e-4)  # the aux BN matters
    loss.backward()
    layer = next(m for m in model.modules() if isinstance(m, DualBatchNorm2d))
    assert layer.main.weight.grad.abs().sum() > 0 and layer.aux.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- training


def test_standard_training_reduces_loss_and_reaches_high_accuracy(digits):
    x_train, y_train, x_test, y_test = digits
    model = digits_cnn(seed=0)
    history = train_standard(model, x_train, y_train, epochs=3, seed=0, progress=False)
    assert history["method"] == "standard" and len(history["epoch_loss"]) == 3
    assert history["epoch_loss"][-1] < 0.5 * history["epoch_loss"][0]
    assert not model.training
    assert accuracy(model, x_test, y_test) > 0.9


@pytest.mark.parametrize("trainer", [train_advprop, train_pgd_at])
def test_adversarial_training_reduces_loss(subset, trainer):
    model = digits_cnn(dual_bn=trainer is train_advprop, seed=0)
    history = trainer(model, *subset, epochs=3, steps=2, seed=0, progress=False)
    assert history["epoch_loss"][-1] < history["epoch_loss"][0]
    assert len(history["batch_loss"]) == 3 * 4 and history["seconds"] > 0


def test_training_is_deterministic_and_draws_only_from_its_seed(subset):
    state = torch.random.get_rng_state()
    models = [digits_cnn(dual_bn=True, seed=0) for _ in range(3)]
    for model, seed in zip(models, (7, 7, 8)):
        train(model, *subset, method="advprop", seed=seed, progress=False, **TINY)
    assert same_weights(models[0], models[1]) and not same_weights(models[0], models[2])
    assert torch.equal(state, torch.random.get_rng_state())


def test_training_rejects_bad_input(subset):
    with pytest.raises(ValueError, match="standard.*advprop.*pgd_at"):
        train(digits_cnn(), *subset, method="trades")
    with pytest.raises(ValueError, match="DualBatchNorm2d"):
        train_advprop(digits_cnn(), *subset, progress=False, **TINY)
    with pytest.raises(ValueError, match="epochs"):
        train_standard(digits_cnn(), *subset, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        train_standard(digits_cnn(), *subset, lr=0)


# ----------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="session")
def trained(digits):
    model = digits_cnn(seed=0)
    train_standard(model, digits[0], digits[1], epochs=2, seed=0, progress=False)
    return model


def test_accuracy_restores_the_mode_and_matches_a_manual_count(trained, digits):
    x, y = digits[2], digits[3]
    trained.train()
    value = accuracy(trained, x, y, batch_size=100)
    assert trained.training
    trained.eval()
    with torch.no_grad():
        assert value == (trained(x).argmax(1) == y).sum().item() / len(y)


def test_robust_accuracy(trained, digits):
    x, y = digits[2][:200], digits[3][:200]
    clean = accuracy(trained, x, y)
    assert robust_accuracy(trained, x, y, eps=0.0) == clean
    pgd_acc = robust_accuracy(trained, x, y, eps=0.1, seed=3)
    assert pgd_acc == robust_accuracy(trained, x, y, eps=0.1, seed=3)
    assert pgd_acc < clean
    assert pgd_acc <= robust_accuracy(trained, x, y, eps=0.1, attack="fgsm") + 0.02
    with pytest.raises(ValueError, match="pgd.*fgsm"):
        robust_accuracy(trained, x, y, eps=0.0, attack="cw")


def test_robustness_curve_is_one_robust_accuracy_per_eps(trained, digits):
    x, y = digits[2][:100], digits[3][:100]
    curve = robustness_curve(trained, x, y, [0.0, 0.05, 0.3], "fgsm")
    assert curve == [robust_accuracy(trained, x, y, eps=e, attack="fgsm") for e in (0, 0.05, 0.3)]
    assert curve[0] >= curve[1] >= curve[2]


def test_pgd_robustness_curve_is_one_batched_attack(trained, digits, monkeypatch):
    import workbench.defenses.evaluation as evaluation

    x, y = digits[2][:60], digits[3][:60]
    calls = []
    real = evaluation.pgd_sweep
    monkeypatch.setattr(evaluation, "pgd_sweep",
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    epsilons = [0.0, 0.05, 0.1, 0.2]
    curve = robustness_curve(trained, x, y, epsilons, "pgd", steps=5, seed=2)
    assert calls == [epsilons], "the whole curve must be one sweep"
    assert curve[0] == accuracy(trained, x, y)
    assert curve == sorted(curve, reverse=True)
    # each point is what PGD at that budget gives: within a few images of a separate attack
    # (the random starts are drawn in another order)
    for eps, value in zip(epsilons[1:], curve[1:]):
        alone = robust_accuracy(trained, x, y, eps=eps, steps=5, seed=2)
        assert abs(value - alone) <= 0.1, (eps, value, alone)


def test_transfer_to_the_source_itself_is_white_box(trained, digits):
    x, y = digits[2][:100], digits[3][:100]
    assert (transfer_accuracy(trained, trained, x, y, eps=0.1, steps=5, seed=1)
            == robust_accuracy(trained, x, y, eps=0.1, steps=5, seed=1))
    fresh = digits_cnn(seed=9)
    assert 0.0 <= transfer_accuracy(trained, fresh, x, y, eps=0.1, steps=5, seed=1) <= 1.0


def test_accuracy_and_confidence_match_a_manual_computation(trained, digits):
    from workbench.defenses.evaluation import accuracy_and_confidence

    x, y = digits[2][:300], digits[3][:300]
    trained.train()
    acc, conf = accuracy_and_confidence(trained, x, y, batch_size=128)
    assert trained.training  # restored
    trained.eval()
    with torch.no_grad():
        probs = trained(x).softmax(1)
    assert acc == accuracy(trained, x, y) == (probs.argmax(1) == y).sum().item() / len(y)
    assert isinstance(conf, float) and 0 <= conf <= 1
    assert conf == pytest.approx(probs.gather(1, y[:, None]).mean().item(), abs=1e-6)


def test_accuracy_and_confidence_curve_calls_the_attack_once_per_eps_in_eval_mode(trained,
                                                                                   digits):
    from workbench.attacks import fgsm
    from workbench.defenses.evaluation import (accuracy_and_confidence,
                                               accuracy_and_confidence_curve)

    x, y = digits[2][:64], digits[3][:64]
    calls = []

    def spy(model, x_, y_, eps):
        calls.append((eps, model.training))
        return fgsm(model, x_, y_, eps)

    epsilons = [0.0, 0.05, 0.2]
    trained.train()
    accuracy_curve, confidence_curve = accuracy_and_confidence_curve(trained, x, y, epsilons, spy)
    assert trained.training  # restored
    trained.eval()
    assert calls == [(eps, False) for eps in epsilons]
    for curve in (accuracy_curve, confidence_curve):
        assert curve.shape == (3,) and curve.dtype == torch.float32
    for i, eps in enumerate(epsilons):
        acc, conf = accuracy_and_confidence(trained, fgsm(trained, x, y, eps), y)
        assert accuracy_curve[i].item() == pytest.approx(acc)
        assert confidence_curve[i].item() == pytest.approx(conf, abs=1e-6)
    assert accuracy_curve[0] > accuracy_curve[2] and confidence_curve[0] > confidence_curve[2]
    with pytest.raises(ValueError, match="shaped"):
        accuracy_and_confidence_curve(trained, x[0], y[:1], epsilons, spy)


# ----------------------------------------------------------------------------- experiment


def test_pgd_at_is_more_robust_than_standard_training(experiment):
    """The science claim of the notebook: under the same PGD attack at the headline eps,
    PGD-AT keeps far more of its accuracy than standard training (means over 3 seeds)."""
    result = experiment
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["pgd_at"]["robust_acc"] > rows["standard"]["robust_acc"] + 0.2
    assert all(run["clean_acc"] > 0.9 for run in rows["standard"]["per_seed"])


def test_experiment_result_shape(experiment):
    result = experiment
    assert result["eps"] == experiments.EPS and result["seeds"] == [0, 1, 2]
    assert result["std"] == "sample (ddof=1)"
    assert [row["method"] for row in result["rows"]] == list(METHODS)
    curve_eps = list(experiments.CURVE_EPS)
    for row in result["rows"]:
        assert [run["seed"] for run in row["per_seed"]] == [0, 1, 2]
        assert row["clean_acc"] == pytest.approx(np.mean([r["clean_acc"] for r in row["per_seed"]]))
        assert row["robust_acc_std"] == pytest.approx(
            np.std([r["robust_acc"] for r in row["per_seed"]], ddof=1))
        assert row["curve_eps"] == curve_eps
        assert len(row["fgsm_curve"]) == len(row["pgd_curve"]) == len(curve_eps)
        assert row["pgd_curve"][0] == row["fgsm_curve"][0] == pytest.approx(row["clean_acc"])
        assert row["pgd_curve"][curve_eps.index(result["eps"])] == row["pgd10_acc"]
        # the worst case over PGD-10 and APGD never reports more than PGD-10 alone
        for run in row["per_seed"]:
            assert run["robust_acc"] <= run["pgd10_acc"]
        assert all(0 <= v <= 1 for v in row["fgsm_curve"] + row["pgd_curve"])
    assert "PGD-10, APGD-CE-100, APGD-DLR-100" in result["robust_attack"]


def test_cli_prints_the_same_json_from_the_cache(experiment):
    env = {**os.environ, "WORKBENCH_MODE": "lite"}  # the suite's cache, the fixture's
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "experiment", "advprop",
                          "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(experiment))


def test_a_model_evaluated_here_gives_the_numbers_the_workers_gave(experiment):
    """The fixture's experiment ran its jobs in two worker processes; the same job in this
    process (weights from the cache, evaluation again) gives the same per-seed numbers."""
    result = experiment
    run = experiments._model_job("advprop", 1, experiments.EPOCHS, result["eps"],
                                 experiments.CURVE_EPS, True)
    (row,) = [r for r in result["rows"] if r["method"] == "advprop"]
    assert {k: run[k] for k in row["per_seed"][1]} == row["per_seed"][1]


def test_a_second_run_reads_the_result_and_evaluates_nothing(experiment, monkeypatch):
    result = experiment
    monkeypatch.setattr(experiments, "run_in_workers", fail_training)
    assert run_advprop_experiment() == json.loads(json.dumps(result))
    with pytest.raises(AssertionError, match="trained although"):
        run_advprop_experiment(cache=False)  # computes afresh, never reads the result


def test_cli_table(experiment, monkeypatch, capsys):
    result = experiment
    monkeypatch.setattr(experiments, "run_advprop_experiment", lambda **kwargs: result)
    assert cli_main(["experiment", "advprop"]) == 0
    table = capsys.readouterr().out
    pgd_at = result["rows"][2]
    assert f"{pgd_at['robust_acc']:.3f} ± {pgd_at['robust_acc_std']:.3f}" in table
    assert all(method in table for method in METHODS)
    with pytest.raises(SystemExit):
        cli_main(["experiment", "trades"])


# ----------------------------------------------------------------------------- cache


def fail_training(*args, **kwargs):
    raise AssertionError("trained although the weights are cached")


def test_train_or_load_caches_and_loads(tmp_cache, monkeypatch):
    model = train_or_load("pgd_at", 0, **TINY)
    path = cache_path("pgd_at", 0, **TINY)
    assert path.is_file() and path.parent == tmp_cache / "digits"
    assert not model.training and "pgd_at" in model.source
    monkeypatch.setattr(experiments, "train", fail_training)
    assert same_weights(train_or_load("pgd_at", 0, **TINY), model)
    assert cache_path("pgd_at", 1, **TINY) != path != cache_path("pgd_at", 0, epochs=2)


def test_standard_training_is_cached_whatever_the_attack_settings(tmp_cache):
    assert cache_path("standard", 0, eps=0.1, steps=3) == cache_path("standard", 0)
    assert cache_path("advprop", 0, eps=0.1) != cache_path("advprop", 0)


def test_corrupt_cache_file_is_trained_again(tmp_cache):
    reference = train_or_load("standard", 0, cache=False, **TINY)
    path = cache_path("standard", 0, **TINY)
    assert not path.exists()  # cache=False writes nothing
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable"):
        model = train_or_load("standard", 0, **TINY)
    assert same_weights(model, reference)
    loaded = digits_cnn()
    loaded.load_state_dict(torch.load(path, weights_only=True))
    assert same_weights(loaded, reference)


def test_train_or_load_rejects_unknown_method_and_hyperparameters(tmp_cache):
    with pytest.raises(ValueError, match="'standard', 'advprop', 'pgd_at'"):
        train_or_load("trades", 0)
    with pytest.raises(ValueError, match="epoch"):
        train_or_load("standard", 0, epoch=3)
