"""The trace sums two gradients of one tensor in place where torch does on real tensors (autograd's InputBuffer,
can_accumulate_inplace), and out of place where torch does: vramplan/measure/livebytes.py accumulates_in_place,
driven by fake_step.gpu_gradient_accumulation."""

import pytest

torch = pytest.importorskip("torch")

from vramplan.measure import livebytes  # noqa: E402
from vramplan.measure.fake_step import fake_mode, gpu_gradient_accumulation  # noqa: E402
from vramplan.measure.livebytes import LiveBytesTracker  # noqa: E402


def _two_branches(x):
    y = x * 2
    return y, (y.sin() * torch.arange(8.0)).sum() + (y.cos() * torch.arange(8.0)).sum()


def _residual(x):
    y = x * 2
    return y, ((y + (y * 3).sin()) * torch.arange(8.0)).sum()


def _same_gradient_twice(x):
    y = x * 2
    return y, ((y + y) * torch.arange(8.0)).sum()


def _expanded_gradient(x):
    y = x * 2
    return y, (y.sin() + y.cos()).sum() + (y * 0).sum()


def _transposed_weight_twice(x):
    """A weight used by two matmuls through its transpose (torchtune's chunked output head): each use's gradient
    arrives as a transposed view of mm's result."""
    weight = x[:, :4] * 2  # [4, 4], not a leaf: its gradients meet in MulBackward's input buffer
    inputs = x[:, 4:].detach()
    first = inputs @ weight.t()
    second = (inputs * 3) @ weight.t()
    return weight, (first * torch.arange(4.0)).sum() + (second * torch.arange(4.0)).sum()


def _one_gradient_to_two_inputs(x):
    """AddBackward hands one tensor to both of its inputs; the other consumer runs before the sum."""
    y = x * 2
    w = y * 3
    return y, ((y + w).sin() * torch.arange(8.0)).sum()


def _stride_zero_gradient(x):
    """A sum's backward hands over an expanded (stride-0) gradient: not dense, so not summed into."""
    y = x * 2
    return y, (y.sin() * torch.arange(8.0)).sum() + y.sum()


GRAPHS = [_two_branches, _residual, _same_gradient_twice, _expanded_gradient, _transposed_weight_twice,
          _one_gradient_to_two_inputs, _stride_zero_gradient]


def _real_in_place(graph) -> bool:
    """Whether torch's own engine summed into one of the gradients in place: the accumulated gradient of `y` has
    the data pointer of a gradient a node produced, and a version counter past the one it was produced with (an
    out-of-place sum at a reused address has a fresh counter)."""
    x = torch.randn(4, 8, requires_grad=True)
    y, loss = graph(x)
    produced, accumulated = {}, []
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or node is y.grad_fn:
            continue
        seen.add(id(node))
        node.register_hook(lambda grads_in, grads_out: produced.update(
            (g.data_ptr(), g._version) for g in grads_in if g is not None))
        stack.extend(child for child, _ in node.next_functions)
    y.grad_fn.register_prehook(lambda grads: accumulated.append((grads[0].data_ptr(), grads[0]._version)))
    loss.backward()
    pointer, version = accumulated[0]
    return pointer in produced and version > produced[pointer]


def _traced_in_place(graph, monkeypatch) -> bool:
    decisions = []
    original = livebytes.accumulates_in_place

    def recording(*args):
        decisions.append(original(*args))
        return decisions[-1]

    monkeypatch.setattr(livebytes, "accumulates_in_place", recording)
    tracker = LiveBytesTracker()
    with fake_mode(), tracker:
        x = torch.randn(4, 8, requires_grad=True)
        _, loss = graph(x)
        with gpu_gradient_accumulation(tracker, loss):
            loss.backward()
    return any(decisions)


@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.__name__)
def test_trace_accumulates_like_torch(graph, monkeypatch):
    assert _traced_in_place(graph, monkeypatch) == _real_in_place(graph)


def test_the_cases_cover_both_answers():
    answers = {_real_in_place(graph) for graph in GRAPHS}
    assert answers == {True, False}
