"""PGD's loop: what the model is asked to compute, and that cutting work changes nothing the
caller can see (autocast, early stop, restarts, per-example budgets, layouts, callbacks).

Model calls are counted with forward hooks: a forward with autograd on is followed by exactly
one backward (counted with a hook on its output), a forward without autograd is the final
objective-and-success pass. Per restart PGD should cost ``steps`` forward+backward passes and
at most one forward without a graph.
"""

from __future__ import annotations

import pytest
import torch

from conftest import LinearModel, SmallConvNet, random_batch
from workbench.attacks import attack_success, pgd, pgd_restarts, pgd_sweep

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
    pgd_restarts(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 4, steps=steps, norm=norm,
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
    many = pgd_restarts(model, x, y, eps=0.1, alpha=0.02, steps=3, random_start=False,
                        restarts=4)
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
                 early_stop=True, on_step=lambda step: seen.append(step.step))
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
    first = pgd(model, x, y, generator=torch.Generator().manual_seed(3), **kwargs)
    counter = CallCounter(model)
    combined = pgd_restarts(model, x, y, restarts=4,
                            generator=torch.Generator().manual_seed(3), **kwargs)
    counter.handle.remove()
    assert combined.success.sum() > first.success.sum(), "test set-up: restarts must help"
    assert (combined.success >= first.success).all()
    assert torch.equal(combined.success,
                       attack_success(model, combined.x_adv, y, targeted=False))
    # the first restart sees all 32 and is the lone run's; later ones only what is left
    sizes = [n for n, _ in counter.calls]
    later = sizes[3:]  # the first run: 2 steps and a final forward at most
    assert sizes[0] == 32 and later and max(later) <= 32 - int(first.success.sum()), sizes
    for i in range(32):  # what the first run fooled is the first run's
        if first.success[i]:
            assert torch.equal(combined.x_adv[i], first.x_adv[i]), i


# ----------------------------------------------------------------------------- same answers


@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize("attack", ["linf", "l2", "linf-targeted", "l2-targeted"])
def test_final_success_equals_a_separate_check(attack, restarts, early_stop):
    norm, *targeted = attack.split("-")
    model = SmallConvNet(seed=1).eval()
    x, y = random_batch(4, n=10)
    result = pgd_restarts(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 3, steps=4, norm=norm,
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
        return pgd_restarts(model, x, y, eps=EPS[norm], alpha=EPS[norm] / 4, steps=3,
                            norm=norm, restarts=2, early_stop=early_stop,
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
                 on_step=seen.append)
    assert [s.step for s in seen] == [0, 1, 2, 3]
    assert torch.equal(torch.stack([s.objective for s in seen]), result.loss_trace)
    assert torch.equal(seen[-1].x_adv, result.x_adv)
    assert torch.equal(seen[-1].success, result.success)
    assert not torch.equal(seen[0].x_adv, seen[-1].x_adv), "on_step must get copies"
    with torch.no_grad():
        torch.testing.assert_close(seen[1].logits, model(seen[1].x_adv))


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("attack", ["linf", "l2", "linf-targeted"])
def test_under_cpu_autocast_bfloat16(attack):
    norm, *targeted = attack.split("-")
    model = SmallConvNet(seed=4).eval()
    x, y = random_batch(7, n=8)
    eps = EPS[norm]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # test set-up: autocast is really on
        result = pgd_restarts(model, x, y, eps=eps, alpha=eps / 4, steps=4, norm=norm,
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



# ----------------------------------------------------------------------------- layouts, errors


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_result_has_the_callers_layout_and_the_model_sees_it(layout):
    model = SmallConvNet().eval()
    x, y = random_batch(2, n=4)
    x = x.contiguous(memory_format=layout)
    x_before = x.clone()
    counter = CallCounter(model)
    result = pgd(model, x, y, eps=0.1, alpha=0.02, steps=2,
                 generator=torch.Generator().manual_seed(0))
    assert result.x_adv.is_contiguous(memory_format=layout)
    assert torch.equal(x, x_before)
    check_invariants(result, x, 0.1, "linf")
    # pgd does not change the layout behind the caller's back: the model sees what it is given
    assert all(cl == (layout == torch.channels_last) for cl in counter.channels_last)


class ViewsItsInput(torch.nn.Module):
    """Written for NCHW: ``view`` on the input (fails on channels-last tensors), as many
    course MLPs and LeNets do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = torch.nn.Linear(3 * 8 * 8, 3)

    def forward(self, x):
        return self.head(x.view(x.shape[0], -1))


def test_models_written_for_nchw_work():
    model = ViewsItsInput().eval()
    x, y = random_batch(9, n=5)
    result = pgd(model, x, y, eps=0.1, alpha=0.03, steps=3,
                 generator=torch.Generator().manual_seed(4))
    check_invariants(result, x, 0.1, "linf")


def test_an_error_in_the_model_surfaces_as_itself_once():
    class OutOfMemory(torch.nn.Module):
        calls = 0

        def forward(self, x):
            OutOfMemory.calls += 1
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    x, y = random_batch(0, n=2)
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        pgd(OutOfMemory(), x, y, eps=0.1, alpha=0.02, steps=3)
    assert OutOfMemory.calls == 1, "the attack was retried after the error"


# ----------------------------------------------------------------------------- budgets per example


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_example_budgets_equal_one_attack_per_budget(norm):
    model = SmallConvNet(seed=6).eval()
    x, y = random_batch(10, n=3)
    budgets = [0.0, EPS[norm] / 2, EPS[norm]]
    xs, ys = x.repeat(3, 1, 1, 1), y.repeat(3)
    eps = torch.tensor(budgets).repeat_interleave(3)
    batched = pgd(model, xs, ys, eps=eps, alpha=eps / 4, steps=4, norm=norm,
                  random_start=False)
    for i, budget in enumerate(budgets):
        one = pgd(model, x, y, eps=budget, alpha=budget / 4, steps=4, norm=norm,
                  random_start=False)
        rows = slice(3 * i, 3 * i + 3)
        torch.testing.assert_close(batched.x_adv[rows], one.x_adv, atol=1e-6, rtol=0)
        assert torch.equal(batched.success[rows], one.success)
        assert (distance(batched.x_adv[rows], x, norm) <= budget + 1e-6).all()
    assert torch.equal(batched.x_adv[:3], x), "a zero budget must not move its images"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_starts_stay_in_each_examples_own_ball(norm):
    from workbench.attacks import random_start_point

    x = torch.full((64, 3, 8, 8), 0.5)
    eps = torch.linspace(0, EPS[norm], 64)
    start = random_start_point(x, eps, norm, torch.Generator().manual_seed(0))
    d = distance(start, x, norm)
    assert (d <= eps + 1e-6).all()
    assert (d[1:] > 0).all() and d[0] == 0


@pytest.mark.parametrize("bad, message", [
    (torch.tensor([0.1, 0.2]), r"\(N,\) = \(3,\)"),
    (torch.tensor([0.1, -0.2, 0.1]), r">= 0"),
    (torch.tensor([0.1, float("nan"), 0.1]), r"finite"),
    (torch.tensor([0.1, 8.0, 0.1]), r"8/255"),
    (torch.ones(3, 1) * 0.1, r"\(N,\)"),
])
def test_bad_per_example_budgets_say_what_is_wrong(bad, message):
    model = SmallConvNet().eval()
    x, y = random_batch(0, n=3)
    with pytest.raises(ValueError, match=message):
        pgd(model, x, y, eps=bad, alpha=0.01, steps=1)


def test_fgsm_takes_per_example_budgets():
    from workbench.attacks import fgsm

    model = SmallConvNet(seed=7).eval()
    x, y = random_batch(3, n=4)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.2])
    batched = fgsm(model, x, y, eps)
    for i in range(4):
        torch.testing.assert_close(batched[i:i + 1], fgsm(model, x[i:i + 1], y[i:i + 1],
                                                          float(eps[i])))


def test_sweep_is_pgd_at_each_budget():
    model = SmallConvNet(seed=8).eval()
    x, y = random_batch(11, n=4)
    epsilons = [0.02, 0.05, 0.1]
    counter = CallCounter(model)
    sweep = pgd_sweep(model, x, y, epsilons, steps=3, random_start=False)
    assert len(counter.calls) == 4, "one batched attack: steps forward-backward + one forward"
    counter.handle.remove()
    assert sweep.x_adv.shape == (3, 4, 3, 8, 8) and sweep.success.shape == (3, 4)
    assert sweep.loss_trace.shape == (3, 3, 4)
    for e, eps in enumerate(epsilons):
        one = pgd(model, x, y, eps=eps, alpha=2.5 * eps / 3, steps=3, random_start=False)
        torch.testing.assert_close(sweep.x_adv[e], one.x_adv, atol=1e-6, rtol=0)
        assert torch.equal(sweep.success[e], one.success)
    chunked = pgd_sweep(model, x, y, epsilons, steps=3, random_start=False, batch_size=5)
    torch.testing.assert_close(chunked.x_adv, sweep.x_adv)


# ----------------------------------------------------------------------------- the lite model


def test_lite_model_under_autocast(lite_model):
    # The real network, small: 3 photos at 128 px, 2 steps, bfloat16.
    from workbench.data import photo_batch

    x, y = photo_batch(crops_per_photo=1, size=128)
    x, y = x[:3], y[:3]
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
    assert [n for n, _ in counter.calls] == [3, 3, 3]  # 2 steps + the final forward
    assert counter.backward == 2
    assert not lite_model.training
    assert all(p.requires_grad for p in lite_model.parameters())
    assert all(p.grad is None for p in lite_model.parameters())
