"""PGD's fast paths: what the model is asked to compute, and that cutting work changes nothing
the caller can see (autocast, early stop, restarts, micro-batches, channels-last, callbacks).

Model calls are counted with forward hooks: a forward with autograd on is followed by exactly
one backward (counted with a hook on its output), a forward without autograd is the final
objective-and-success pass. Per restart PGD should cost ``steps`` forward+backward passes and
at most one forward without a graph.
"""

from __future__ import annotations

import pytest
import torch

from conftest import LinearModel, SmallConvNet, random_batch
from workbench.attacks import attack_success, pgd
from workbench.attacks.pgd import CHANNELS_LAST, MICRO_BATCH_VALUES

EPS = {"linf": 0.1, "l2": 0.5}


class CallCounter:
    """Forward hook recording, per model call, the batch size, whether autograd was on, and
    the input's layout; counts backward passes through the output."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[tuple[int, bool]] = []
        self.channels_last: list[bool] = []
        self.backward = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        x = inputs[0]
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        self.channels_last.append(
            x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        if output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.backward += 1

    @property
    def with_grad(self) -> int:
        return sum(grad for _, grad in self.calls)

    @property
    def without_grad(self) -> int:
        return sum(not grad for _, grad in self.calls)

    def images(self) -> int:
        return sum(n for n, _ in self.calls)


def distance(x_adv, x, norm):
    d = (x_adv.float() - x.float()).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


def check_invariants(result, x, eps, norm):
    assert result.x_adv.dtype == x.dtype and result.x_adv.shape == x.shape
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert (distance(result.x_adv, x, norm) <= eps + 1e-6).all()
    assert result.success.dtype == torch.bool and result.success.shape == (x.shape[0],)
    assert result.loss_trace.dtype == torch.float32


# ----------------------------------------------------------------------------- model calls


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_steps_forward_backward_and_one_final_forward_per_restart(norm, restarts):
    model = SmallConvNet().eval()
    x, y = random_batch(0, n=6)
    counter = CallCounter(model)
    steps = 5
    pgd(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 4, steps=steps, norm=norm,
        restarts=restarts, generator=torch.Generator().manual_seed(0))
    assert counter.with_grad == steps * restarts
    assert counter.backward == steps * restarts, "a forward with a graph was not backpropagated"
    assert counter.without_grad == restarts
    assert all(n == 6 for n, _ in counter.calls)


def test_zero_steps_is_one_forward():
    model = SmallConvNet().eval()
    x, y = random_batch(1, n=3)
    counter = CallCounter(model)
    result = pgd(model, x, y, eps=0.1, alpha=0.02, steps=0)
    assert counter.calls == [(3, False)] and counter.backward == 0
    assert torch.equal(result.success, attack_success(model, result.x_adv, y, targeted=False))


def test_restarts_without_random_start_run_once():
    # Every run from x itself is the same run: the answer of one, for the price of one.
    model = SmallConvNet().eval()
    x, y = random_batch(2, n=4)
    one = pgd(model, x, y, eps=0.1, alpha=0.02, steps=3, random_start=False)
    counter = CallCounter(model)
    many = pgd(model, x, y, eps=0.1, alpha=0.02, steps=3, random_start=False, restarts=4)
    assert counter.with_grad == 3 and counter.without_grad == 1
    assert torch.equal(many.x_adv, one.x_adv) and torch.equal(many.loss_trace, one.loss_trace)


def test_early_stop_shrinks_the_batch_and_stops_calling_the_model():
    model = SmallConvNet(seed=2).eval()
    x, y = random_batch(12, n=16)
    kwargs = dict(eps=0.2, alpha=0.03, steps=8, random_start=False)
    full_counter = CallCounter(model)
    full = pgd(model, x, y, **kwargs)
    full_counter.handle.remove()
    counter = CallCounter(model)
    early = pgd(model, x, y, early_stop=True, **kwargs)
    assert counter.images() < full_counter.images()
    sizes = [n for n, _ in counter.calls]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < 16, sizes
    assert len(counter.calls) <= kwargs["steps"] + 1
    assert counter.backward == counter.with_grad
    # The verdict is a separate check's, and what the full run fooled stays fooled.
    assert torch.equal(early.success, attack_success(model, early.x_adv, y, targeted=False))
    assert (early.success >= full.success).all()


def test_early_stop_when_everything_is_fooled_at_once():
    model = SmallConvNet(seed=2).eval()
    x, y = random_batch(12, n=4)
    seen = []
    counter = CallCounter(model)
    result = pgd(model, x, y, eps=1.0, alpha=1.0, steps=10, random_start=False,
                 early_stop=True, on_step=lambda k, objective: seen.append(k))
    assert result.success.all()
    assert counter.with_grad == 2 and counter.without_grad == 0  # step 1, then the check
    assert seen == list(range(10))
    assert (result.loss_trace == result.loss_trace[0]).all()


def test_restarts_with_early_stop_only_attack_what_is_left():
    model = LinearModel(num_classes=3, seed=1).eval()
    x, y = random_batch(11, n=32)
    with torch.no_grad():  # centre the logits so random starts matter
        model.linear.bias -= model(x).median(0).values
    kwargs = dict(eps=0.2, alpha=0.01, steps=2, early_stop=True)
    restarts = 4
    counter = CallCounter(model)
    combined = pgd(model, x, y, restarts=restarts,
                   generator=torch.Generator().manual_seed(3), **kwargs)
    counter.handle.remove()
    g = torch.Generator().manual_seed(3)
    runs = [pgd(model, x, y, generator=g, **kwargs) for _ in range(restarts)]
    successes = torch.stack([r.success for r in runs])
    assert successes.any(0).sum() > successes[0].sum(), "test set-up: restarts must help"
    assert torch.equal(combined.success, successes.any(0))
    assert torch.equal(combined.success,
                       attack_success(model, combined.x_adv, y, targeted=False))
    # the first restart sees all 32, later ones only the examples still standing
    sizes = [n for n, _ in counter.calls]
    assert sizes[:2] == [32, 32] and max(sizes[2:]) < 32, sizes
    for i in range(32):  # a fooled example is the one its first successful restart made
        if combined.success[i]:
            k = int(successes[:, i].float().argmax())
            assert torch.equal(combined.x_adv[i], runs[k].x_adv[i]), i


# ----------------------------------------------------------------------------- same answers


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("attack", ["linf", "l2", "linf-targeted", "l2-targeted"])
def test_final_success_equals_a_separate_check(attack, restarts, early_stop):
    norm, *targeted = attack.split("-")
    model = SmallConvNet(seed=1).eval()
    x, y = random_batch(4, n=10)
    result = pgd(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 3, steps=4, norm=norm,
                 targeted=bool(targeted), restarts=restarts, early_stop=early_stop,
                 generator=torch.Generator().manual_seed(1))
    check_invariants(result, x, EPS[norm], norm)
    assert torch.equal(result.success,
                       attack_success(model, result.x_adv, y, targeted=bool(targeted)))
    sign = -1.0 if targeted else 1.0
    with torch.no_grad():
        final = sign * torch.nn.functional.cross_entropy(model(result.x_adv), y,
                                                         reduction="none")
    torch.testing.assert_close(result.loss_trace[-1], final)


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_same_generator_seed_same_result(norm, early_stop):
    model = SmallConvNet().eval()
    x, y = random_batch(5, n=8)

    def attack(seed):
        return pgd(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 4, steps=3, norm=norm,
                   restarts=2, early_stop=early_stop,
                   generator=torch.Generator().manual_seed(seed))

    a, b, c = attack(7), attack(7), attack(8)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)
    assert torch.equal(a.loss_trace, b.loss_trace)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_generator_none_follows_the_global_seed():
    model = SmallConvNet().eval()
    x, y = random_batch(5, n=4)
    torch.manual_seed(3)
    a = pgd(model, x, y, eps=0.1, alpha=0.02, steps=2).x_adv
    torch.manual_seed(3)
    b = pgd(model, x, y, eps=0.1, alpha=0.02, steps=2).x_adv
    assert torch.equal(a, b)


def test_on_step_sees_the_loss_trace_in_order():
    model = SmallConvNet().eval()
    x, y = random_batch(3, n=5)
    seen = []
    result = pgd(model, x, y, eps=0.1, alpha=0.02, steps=4,
                 generator=torch.Generator().manual_seed(0),
                 on_step=lambda k, objective: seen.append((k, objective)))
    assert [k for k, _ in seen] == [0, 1, 2, 3]
    assert torch.equal(torch.stack([o for _, o in seen]), result.loss_trace)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_micro_batches_give_the_whole_batch_answer(norm, monkeypatch):
    model = SmallConvNet(seed=3).eval()
    x, y = random_batch(6, n=7)
    kwargs = dict(eps=EPS[norm], alpha=EPS[norm] / 4, steps=3, norm=norm, restarts=2)
    whole = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
    monkeypatch.setitem(MICRO_BATCH_VALUES, "cpu", 3 * x[0].numel())  # 3 images a pass
    counter = CallCounter(model)
    parts = pgd(model, x, y, generator=torch.Generator().manual_seed(0), **kwargs)
    assert [n for n, _ in counter.calls[:3]] == [3, 3, 1]
    assert counter.with_grad == 3 * 3 * 2 and counter.without_grad == 3 * 2
    torch.testing.assert_close(parts.x_adv, whole.x_adv, atol=1e-6, rtol=0)
    assert torch.equal(parts.success, whole.success)
    torch.testing.assert_close(parts.loss_trace, whole.loss_trace)


@pytest.mark.parametrize("channels_last", [True, False])
def test_layout_of_the_model_input_and_of_the_result(channels_last, monkeypatch):
    monkeypatch.setitem(CHANNELS_LAST, "cpu", channels_last)
    model = SmallConvNet().eval()
    x, y = random_batch(2, n=4)
    x_before = x.clone()
    counter = CallCounter(model)
    result = pgd(model, x, y, eps=0.1, alpha=0.02, steps=2,
                 generator=torch.Generator().manual_seed(0))
    assert all(cl == channels_last for cl in counter.channels_last)
    assert result.x_adv.is_contiguous()  # the caller's layout, whatever ran inside
    assert torch.equal(x, x_before)
    check_invariants(result, x, 0.1, "linf")
    # A caller who passes channels-last images gets channels-last images back.
    x_cl = x.contiguous(memory_format=torch.channels_last)
    out = pgd(model, x_cl, y, eps=0.1, alpha=0.02, steps=2,
              generator=torch.Generator().manual_seed(0)).x_adv
    assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("attack", ["linf", "l2", "linf-targeted"])
def test_under_cpu_autocast_bfloat16(attack):
    norm, *targeted = attack.split("-")
    model = SmallConvNet(seed=4).eval()
    x, y = random_batch(7, n=8)
    eps = EPS[norm]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # test set-up: autocast is really on
        result = pgd(model, x, y, eps=eps, alpha=eps / 4, steps=4, norm=norm,
                     targeted=bool(targeted), restarts=2, early_stop=True,
                     generator=torch.Generator().manual_seed(0))
        expected = attack_success(model, result.x_adv, y, targeted=bool(targeted))
    check_invariants(result, x, eps, norm)
    assert torch.equal(result.success, expected)
    assert torch.isfinite(result.loss_trace).all()
    assert not torch.equal(result.x_adv, x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_images_in_other_dtypes_stay_in_the_ball(dtype, norm):
    # bfloat16 cannot hold 0.5 + 8/255: rounding to nearest would leave the ball.
    model = SmallConvNet(seed=5).eval().to(dtype)
    x, y = random_batch(8, n=6)
    x = x.to(dtype)
    eps = 8 / 255 if norm == "linf" else 0.3
    result = pgd(model, x, y, eps=eps, alpha=eps / 2, steps=3, norm=norm,
                 generator=torch.Generator().manual_seed(0))
    check_invariants(result, x, eps, norm)
    assert torch.equal(result.success, attack_success(model, result.x_adv, y, targeted=False))
    assert result.loss_trace.dtype == torch.float32


def test_random_start_point_in_bfloat16_stays_in_the_ball():
    from workbench.attacks import random_start_point

    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for norm, eps in (("linf", 8 / 255), ("l2", 0.5)):
        start = random_start_point(x, eps, norm, torch.Generator().manual_seed(1))
        assert start.dtype == torch.bfloat16
        assert (distance(start, x, norm) <= eps + 1e-6).all()
        assert start.min() >= 0 and start.max() <= 1


def test_works_under_inference_mode():
    model = SmallConvNet().eval()
    x, y = random_batch(2, n=3)
    expected = pgd(model, x, y, eps=0.1, alpha=0.02, steps=2,
                   generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        x_inf = x.clone()  # an inference tensor
        got = pgd(model, x_inf, y, eps=0.1, alpha=0.02, steps=2,
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(got.x_adv, expected.x_adv)


# ----------------------------------------------------------------------------- the lite model


def test_lite_model_under_autocast_with_micro_batches(lite_model, monkeypatch):
    # The real network, small: 3 photos at 128 px, 2 steps, 2 images per pass, bfloat16.
    from workbench.data import photo_batch

    x, y = photo_batch(crops_per_photo=1, size=128)
    x, y = x[:3], y[:3]
    monkeypatch.setitem(MICRO_BATCH_VALUES, "cpu", 2 * x[0].numel())
    counter = CallCounter(lite_model)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            result = pgd(lite_model, x, y, eps=8 / 255, alpha=4 / 255, steps=2,
                         generator=torch.Generator().manual_seed(0))
        counter.handle.remove()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = attack_success(lite_model, result.x_adv, y, targeted=False)
    finally:
        counter.handle.remove()
    check_invariants(result, x, 8 / 255, "linf")
    assert torch.equal(result.success, expected)
    assert [n for n, _ in counter.calls] == [2, 1] * 3  # 2 steps + the final forward
    assert counter.backward == 4
    assert all(counter.channels_last)
    assert not lite_model.training
    assert all(p.requires_grad for p in lite_model.parameters())
    assert all(p.grad is None for p in lite_model.parameters())


def test_on_step_gets_the_whole_batch_when_restarts_skip_fooled_examples():
    model = LinearModel(num_classes=3, seed=1).eval()
    x, y = random_batch(11, n=12)
    with torch.no_grad():
        model.linear.bias -= model(x).median(0).values
    seen = []
    result = pgd(model, x, y, eps=0.2, alpha=0.01, steps=2, restarts=3, early_stop=True,
                 generator=torch.Generator().manual_seed(3),
                 on_step=lambda k, objective: seen.append((k, objective)))
    assert len(seen) >= 4 and [k for k, _ in seen[:2]] == [0, 1]
    assert all(objective.shape == (12,) for _, objective in seen)
    torch.testing.assert_close(seen[-1][1][result.success], result.loss_trace[-1][result.success])


class ViewsItsInput(torch.nn.Module):
    """Written for NCHW: ``view`` on the input and on a conv's output (both fail on
    channels-last tensors), as many course MLPs and LeNets do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8 + 3 * 8 * 8, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        flat = x.view(x.shape[0], -1)
        features = torch.relu(self.conv(x)).view(x.shape[0], -1)
        return self.head(torch.cat([flat, features], 1))


@pytest.mark.parametrize("random_start", [True, False])
def test_models_written_for_nchw_still_work(random_start, monkeypatch):
    monkeypatch.setitem(CHANNELS_LAST, "cpu", True)
    model = ViewsItsInput().eval()
    x, y = random_batch(9, n=5)
    result = pgd(model, x, y, eps=0.1, alpha=0.03, steps=3, random_start=random_start,
                 generator=torch.Generator().manual_seed(4))
    check_invariants(result, x, 0.1, "linf")
    assert torch.equal(result.success, attack_success(model, result.x_adv, y, targeted=False))
    # the same answer (and the same random start) as an attack run in NCHW from the start
    monkeypatch.setitem(CHANNELS_LAST, "cpu", False)
    nchw = pgd(model, x, y, eps=0.1, alpha=0.03, steps=3, random_start=random_start,
               generator=torch.Generator().manual_seed(4))
    assert torch.equal(result.x_adv, nchw.x_adv)
    assert torch.equal(result.loss_trace, nchw.loss_trace)


def test_a_real_error_is_not_hidden_by_the_layout_retry():
    class Broken(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1) @ torch.ones(7, 3)  # wrong shape: a RuntimeError either way

    x, y = random_batch(0, n=2)
    with pytest.raises(RuntimeError):
        pgd(Broken(), x, y, eps=0.1, alpha=0.02, steps=1)
