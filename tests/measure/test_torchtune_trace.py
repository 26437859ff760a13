"""The trace of torchtune's own training step (vramplan/measure/torchtune_step.py).

Fake: built on the meta device (torchao's to_nf4 sizes each NF4 weight there) and run on FakeTensors. Real: the
same small model with real tensors, torchao quantizing for real. Same bytes, to the byte.
"""

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchtune")

from vramplan.measure.torchtune_step import trace_torchtune_step  # noqa: E402
from vramplan.models.catalog import resolve_model  # noqa: E402
from vramplan.training import resolve_setup  # noqa: E402

pytestmark = pytest.mark.trace
CONFIGS = Path(__file__).resolve().parents[2] / "validation" / "configs"
V512 = resolve_model(str(CONFIGS / "tiny-llama-tt-v512.json"))


def _setup(method: str, **options):
    return resolve_setup(method, stack="torchtune", **{"batch_size": 2, "seq_len": 256, **options})


@pytest.mark.parametrize(
    "method, options",
    [
        pytest.param("lora", {}, id="lora"),
        pytest.param("qlora", {}, id="qlora"),
        pytest.param("full", dict(optimizer_in_backward=True), id="full-optim-in-bwd"),
        pytest.param("lora", dict(activation_offload=True, lora_dropout=0.1), id="lora-offload-dropout"),
        pytest.param("full", dict(gradient_checkpointing=False, loss="standard", optimizer="adamw"), id="full-plain"),
    ],
)
def test_fake_trace_equals_real_trace(method, options):
    setup = _setup(method, **options)
    fake = trace_torchtune_step(V512.config, "llama", setup)
    real = trace_torchtune_step(V512.config, "llama", setup, fake=False)
    assert fake.peak_allocated_bytes == real.peak_allocated_bytes
    assert fake.peak_phase == real.peak_phase
    assert fake.categories == real.categories
    assert fake.total_params == real.total_params


def test_nf4_weights_are_stored_as_torchao_stores_them():
    import torch
    from torchao.dtypes.nf4tensor import to_nf4

    from vramplan.measure.livebytes import cuda_block_bytes
    from vramplan.measure.torchtune_build import nf4_inner_tensors

    setup = _setup("qlora", gradient_checkpointing=False, lora_targets="q_proj,v_proj")
    trace = trace_torchtune_step(V512.config, "llama", setup)
    config = V512.config
    row = next(row for row in trace.by_module if row.module == "layers.*.attn.q_proj")
    weight = to_nf4(torch.zeros(config["hidden_size"], config["hidden_size"], dtype=torch.bfloat16))
    per_layer = sum(cuda_block_bytes(t.untyped_storage().nbytes()) for t in nf4_inner_tensors(weight))
    assert row.categories["parameters"] == config["num_hidden_layers"] * per_layer


def test_activation_offloading_keeps_layer_inputs_off_the_gpu():
    kept = trace_torchtune_step(V512.config, "llama", _setup("lora"))
    offloaded = trace_torchtune_step(V512.config, "llama", _setup("lora", activation_offload=True))
    layer_inputs = V512.spec.num_layers * 2 * 256 * V512.spec.hidden_size * 2
    assert offloaded.host_bytes >= layer_inputs
    assert offloaded.peak_allocated_bytes < kept.peak_allocated_bytes
    assert kept.host_bytes == 0


def test_optimizer_in_backward_never_holds_all_gradients():
    stepped = trace_torchtune_step(V512.config, "llama", _setup("full", optimizer_in_backward=True))
    plain = trace_torchtune_step(V512.config, "llama", _setup("full"))
    assert "optimizer" not in {phase.phase for phase in stepped.phases}
    assert stepped.idle_bytes == plain.idle_bytes  # the same states, kept by the per-parameter optimizers
    assert stepped.peak_allocated_bytes < plain.peak_allocated_bytes


def test_trace_memory_dispatches_on_the_stack():
    from vramplan.api import trace
    from vramplan.errors import NotModelledError

    result = trace(str(CONFIGS / "tiny-llama-tt.json"), "lora", stack="torchtune", batch_size=1, seq_len=128)
    assert result.setup.stack.value == "torchtune"
    assert result.peak_allocated_bytes == sum(result.components.values())
    with pytest.raises(NotModelledError, match="gemma3_text"):
        trace(str(CONFIGS / "tiny-gemma3.json"), "lora", stack="torchtune", batch_size=1, seq_len=128)
