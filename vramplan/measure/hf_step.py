"""Run the real Hugging Face training step on CPU and count its live tensor bytes (a recipe on `fake_step`).

The model comes from `build` (real tensors for small configs, FakeTensors for any size) and is driven through
forward, backward and optimizer step the way transformers' Trainer drives it: accelerate's autocast around the
forward and `convert_to_fp32` of its outputs, `loss.backward()`, `optimizer.step()`, then
`zero_grad(set_to_none=True)`. The step measured is a steady-state one: optimizer states already exist.

Two warm-ups are offered (`fake_step.Warmup`). `step` runs a whole training step first (what a GPU probe does).
`optimizer` only gives every trainable parameter a gradient and steps the optimizer once, which creates the same
states at a third of the cost; tests hold the two to the same peak.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from vramplan.measure.build import AUTOCAST_DTYPE, build_fake_model, build_real_model, make_optimizer
from vramplan.measure.cuda_paths import as_on_gpu
from vramplan.measure.fake_step import (
    StepTrace,
    Warmup,
    attribute_modules,
    create_optimizer_states,
    fake_mode,
    measure_steady_step,
    model_step_trace,
    parameter_owners,
    quant_state_tensors,
    removing,
    run_phases,
    tag_gradients,
    tag_optimizer_states,
)
from vramplan.measure.livebytes import PARAMETERS, LiveBytesTracker
from vramplan.training import Loss, TrainingSetup


@contextlib.contextmanager
def quiet_libraries():
    """transformers' and peft's deprecation notices and config remarks are not the user's business here."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|bitsandbytes)\.")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def trace_training_step(
    config: dict[str, Any],
    setup: TrainingSetup,
    *,
    fake: bool = True,
    warmup: Warmup = "optimizer",
    seed: int = 0,
) -> StepTrace:
    """Peak live bytes of a steady-state training step of `config` under `setup`, on CPU."""
    with quiet_libraries():
        return _trace(config, setup, fake, warmup, seed)


def step_autocast(setup: TrainingSetup):
    """A factory of the step's autocast region (Trainer's mixed precision), or of a null context without one."""
    if not setup.autocast:
        return contextlib.nullcontext
    return lambda: torch.autocast("cpu", dtype=AUTOCAST_DTYPE[setup.precision])


def prepared_forward(model, setup: TrainingSetup):
    """The model as Trainer's accelerator.prepare leaves it: forward under autocast, its outputs converted to fp32
    (accelerate's convert_outputs_to_fp32), when the run has mixed precision (Trainer with bf16/fp16=True)."""
    if not setup.autocast:
        return model
    from accelerate.utils import convert_to_fp32

    autocast = step_autocast(setup)

    def forward(*args, **kwargs):
        with autocast():
            outputs = model(*args, **kwargs)
        return convert_to_fp32(outputs)

    return forward


def _trace(config: dict[str, Any], setup: TrainingSetup, fake: bool, warmup: Warmup, seed: int) -> StepTrace:
    torch.manual_seed(seed)
    mode = fake_mode() if fake else contextlib.nullcontext()
    model = build_fake_model(config, setup, mode) if fake else build_real_model(config, setup)
    loss_kernels = _liger(model, setup) if setup.liger or setup.loss is Loss.FUSED else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker(skip_matmul_arithmetic=not fake)
    prepared = prepared_forward(model, setup)
    hooks = tag_gradients(params, tracker, owners)

    def forward(input_ids):
        extra = {"position_ids": _packed_positions(input_ids)} if setup.packing else {}
        outputs = prepared(input_ids=input_ids, labels=input_ids, **extra)
        return outputs.loss  # `outputs` (its logits) is freed as this returns, before backward

    def training_step(input_ids) -> None:
        run_phases(tracker, lambda: forward(input_ids), optimizer)

    def warm_up() -> None:
        if warmup == "step":
            training_step(input_ids)
        else:
            create_optimizer_states(params, [optimizer])
        tag_optimizer_states(optimizer, tracker, owners)

    # Built outside fake mode: bitsandbytes' optimizers build their quantization maps from Python scalars.
    optimizer = make_optimizer(params, setup.optimizer)
    with removing(hooks), mode, as_on_gpu(setup.packing), loss_kernels, attribute_modules(model, tracker), tracker:
        input_ids = torch.randint(0, int(config["vocab_size"]), (setup.batch_size, setup.seq_len))
        track_model(model, tracker, owners)
        measure_steady_step(tracker, warm_up, lambda: training_step(input_ids))
    return model_step_trace(tracker, model, params)


def track_model(model, tracker: LiveBytesTracker, owners: dict[int, str]) -> None:
    """Parameters, buffers and each 4-bit weight's QuantState, filed under PARAMETERS."""
    for param in model.parameters():
        tracker.tag(param, PARAMETERS, owners.get(id(param), "(model)"))
    tracker.track_all(model.buffers(), PARAMETERS)
    for name, tensors in quant_state_tensors(model):
        tracker.track_all(tensors, PARAMETERS, name)


def _packed_positions(input_ids):
    """Two sequences per row (positions restart half-way), as a packing collator (TRL, axolotl) writes them."""
    batch, length = input_ids.shape
    half = max(1, length // 2)
    return (torch.arange(length, device=input_ids.device) % half).expand(batch, length)


def _liger(model, setup: TrainingSetup):
    """`--loss fused`: liger's fused linear cross-entropy forward on the model; `--liger`: its RMSNorm, SwiGLU and
    RoPE; their kernels as no-ops."""
    from vramplan.measure.liger_kernels import liger_applied, liger_kernels_as_noops
    from vramplan.measure.liger_loss import apply_fused_loss, liger_ops_without_kernels

    fused = setup.loss is Loss.FUSED
    if not setup.liger:
        apply_fused_loss(model)
        return liger_ops_without_kernels()
    stack = contextlib.ExitStack()
    stack.enter_context(liger_applied(model, fused_loss=fused))  # until the step ends
    stack.enter_context(liger_kernels_as_noops())
    if fused:
        stack.enter_context(liger_ops_without_kernels())
    return stack
