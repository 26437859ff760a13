import pytest

from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.training import Optimizer

SHAPES = [(512, 256), (256,), (64, 32), (8192,)]


def _state_bytes(optimizer, params) -> int:
    from vramplan.estimate.dtypes import tensor_bytes

    seen = {}
    for state in optimizer.state.values():
        for value in state.values():
            if hasattr(value, "untyped_storage"):
                seen[value.untyped_storage().data_ptr()] = tensor_bytes(value.untyped_storage().nbytes())
    return sum(seen.values())


def _params(torch, dtype):
    return [torch.nn.Parameter(torch.randn(*shape, dtype=dtype)) for shape in SHAPES]


def _step(optimizer, params):
    for param in params:
        param.grad = param.detach().clone()
    optimizer.step()


@pytest.mark.parametrize("dtype_name, width", [("bfloat16", 2), ("float32", 4)])
@pytest.mark.parametrize("name", [Optimizer.ADAMW, Optimizer.ADAMW_FUSED])
def test_adamw_states_match_torch(name, dtype_name, width):
    torch = pytest.importorskip("torch")
    params = _params(torch, getattr(torch, dtype_name))
    real = torch.optim.AdamW(params, foreach=True) if name is Optimizer.ADAMW else torch.optim.AdamW(params, fused=True)
    _step(real, params)
    shapes = [tuple(p.shape) for p in params]
    assert optimizer_memory(name, shapes, width).state_bytes == _state_bytes(real, params)


def test_adamw_8bit_states_match_bitsandbytes():
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes")
    params = _params(torch, torch.float32)
    real = bnb.optim.AdamW8bit(params)
    _step(real, params)
    shapes = [tuple(p.shape) for p in params]
    assert optimizer_memory(Optimizer.ADAMW_8BIT, shapes, 4).state_bytes == _state_bytes(real, params)


def test_sgd_keeps_no_state():
    assert optimizer_memory(Optimizer.SGD, [(1000,), (10,)], 2).state_bytes == 0


def test_paged_states_leave_the_torch_allocator():
    plain = optimizer_memory(Optimizer.ADAMW, [(4096, 4096)], 2)
    paged = optimizer_memory(Optimizer.PAGED_ADAMW, [(4096, 4096)], 2)
    assert paged.paged_state_bytes + paged.state_bytes == plain.state_bytes
    assert paged.state_bytes < plain.state_bytes


@pytest.mark.parametrize("dtype_name, width", [("bfloat16", 2), ("float32", 4)])
def test_adafactor_states_match_transformers(dtype_name, width):
    torch = pytest.importorskip("torch")
    optimization = pytest.importorskip("transformers.optimization")
    params = _params(torch, getattr(torch, dtype_name))
    real = optimization.Adafactor(params, lr=1e-3, relative_step=False, scale_parameter=False, warmup_init=False)
    _step(real, params)
    shapes = [tuple(p.shape) for p in params]
    assert optimizer_memory(Optimizer.ADAFACTOR, shapes, width).state_bytes == _state_bytes(real, params)
