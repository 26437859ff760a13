"""Run torchtune's single-device training step on CPU, on fake tensors, and count its live tensor bytes.

The step follows recipes/lora_finetune_single_device.py and full_finetune_single_device.py (torchtune 0.6.1):
`_loss_step` (the model's forward inside the activation-offloading context, labels shifted with `hstack` and an
ignore-index column, the loss, `del logits`), `(loss * num_tokens).backward()`, `training.scale_grads`,
`optimizer.step()`, `zero_grad(set_to_none=True)`. With `optimizer_in_bwd` every parameter has its own optimizer,
stepped and zeroed from a post-accumulate-grad hook (`training.register_optim_in_bwd_hooks`).

The loss is the recipe's: `CEWithChunkedOutputLoss` with `model.set_num_output_chunks(loss_fn.num_output_chunks)`
for `--loss chunked`; `torch.nn.CrossEntropyLoss` on the model's fp32 logits for `--loss standard`. The optimizer is
`torch.optim.AdamW(fused=True)` (the configs' choice) or the foreach AdamW for `--optimizer adamw`. A warm-up
optimizer step creates the states; then one step is counted.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from vramplan.errors import NotModelledError
from vramplan.measure.cuda_paths import dropout_as_on_cuda
from vramplan.measure.fake_step import (
    StepTrace,
    attribute_modules,
    create_optimizer_states,
    fake_mode,
    gpu_gradient_accumulation,
    measure_steady_step,
    parameter_owners,
    removing,
    tag_gradients,
    tag_optimizer_states,
)
from vramplan.measure.livebytes import PARAMETERS, LiveBytesTracker
from vramplan.measure.torchtune_build import (
    build_meta_model,
    is_nf4,
    materialise_fake,
    nf4_inner_tensors,
)
from vramplan.training import Loss, Optimizer, Precision, TrainingSetup

# torchtune/modules/loss/ce_chunked_output_loss.py: CEWithChunkedOutputLoss(num_output_chunks=8, ignore_index=-100).
IGNORE_INDEX = -100
TRACEABLE_OPTIMIZERS = (Optimizer.ADAMW_FUSED, Optimizer.ADAMW)


class TorchtuneStepTrace(StepTrace):
    """A StepTrace plus what activation offloading kept in host memory (not in the GPU peak)."""

    host_bytes: int = 0


def refuse_untraceable_torchtune(setup: TrainingSetup) -> None:
    """The recipe options this trace runs; the rest is refused with the reason."""
    if setup.precision is not Precision.BF16:
        raise NotModelledError(
            f"--stack torchtune trains in pure bf16 (recipe dtype: bf16); --precision {setup.precision.value} "
            "is not modelled"
        )
    if setup.optimizer not in TRACEABLE_OPTIMIZERS:
        raise NotModelledError(
            f"--stack torchtune with --optimizer {setup.optimizer.value} is not modelled; use adamw-fused or adamw"
        )
    for flag, on in (("--packing", setup.packing), ("--liger", setup.liger)):
        if on:
            raise NotModelledError(f"{flag} with --stack torchtune is not modelled")
    if setup.attn.value != "sdpa":
        raise NotModelledError("--stack torchtune attends through F.scaled_dot_product_attention: use --attn sdpa")
    if setup.activation_offload and not setup.gradient_checkpointing:
        raise NotModelledError(
            "torchtune raises for enable_activation_offloading without enable_activation_checkpointing "
            "(recipes/lora_finetune_single_device.py __init__)"
        )


def trace_torchtune_step(
    config: dict[str, Any], family: str, setup: TrainingSetup, *, fake: bool = True, seed: int = 0
) -> TorchtuneStepTrace:
    """Peak live bytes of a steady-state torchtune training step of `config` under `setup`, on CPU.

    fake=True: built on the meta device and run on FakeTensors (any size). fake=False: a small model with real
    tensors (torchao quantizes for real), the check that the fake build allocates what the real one does.
    """
    refuse_untraceable_torchtune(setup)
    torch.manual_seed(seed)
    mode = fake_mode() if fake else contextlib.nullcontext()
    model = build_meta_model(config, family, setup, device="meta" if fake else "cpu")
    if fake:
        materialise_fake(model, mode)
    loss_fn = recipe_loss_fn(model, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker(skip_matmul_arithmetic=not fake)
    hooks = tag_gradients(params, tracker, owners)
    optimizers = recipe_optimizers(params, setup)
    distinct = list({id(o): o for o in optimizers.values()}.values())
    if setup.optimizer_in_backward:
        hooks += [p.register_post_accumulate_grad_hook(_step_in_backward(optimizers[id(p)])) for p in params]
    offload = None
    if setup.activation_offload:
        from vramplan.measure.torchtune_offload import EmulatedOffload, keep_output_head

        offload = EmulatedOffload()
        hooks += keep_output_head(model)

    def warm_up() -> None:
        create_optimizer_states(params, distinct)
        for optimizer in distinct:
            tag_optimizer_states(optimizer, tracker, owners)

    batch: list[torch.Tensor] = []  # held until the trace returns, so idle_bytes counts it

    def step() -> None:
        batch[:] = recipe_batch(config, setup)
        recipe_training_step(model, loss_fn, *batch, optimizers, setup, tracker, offload)

    with removing(hooks), mode, dropout_as_on_cuda(), attribute_modules(model, tracker), tracker:
        _track_model(model, tracker, owners)
        measure_steady_step(tracker, warm_up, step)
    return TorchtuneStepTrace.from_tracker(
        tracker,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in params),
        host_bytes=offload.host_peak_bytes if offload is not None else 0,
    )


def recipe_batch(config: dict[str, Any], setup: TrainingSetup) -> list[torch.Tensor]:
    """The batch (tokens, labels) and the recipe's self.ignore_labels_cache, counted as temporaries."""
    return [
        torch.randint(0, int(config["vocab_size"]), (setup.batch_size, setup.seq_len)),
        torch.randint(0, int(config["vocab_size"]), (setup.batch_size, setup.seq_len)),
        torch.full((setup.batch_size, 1), IGNORE_INDEX),
    ]


def recipe_training_step(model, loss_fn, tokens, labels, ignore_cache, optimizers, setup, tracker, offload) -> None:
    from torchtune import training

    tracker.set_phase("forward")
    num_tokens = (labels != IGNORE_INDEX).sum()  # recipe: current_num_tokens, before _loss_step
    with offload if offload is not None else contextlib.nullcontext():
        logits = model(tokens)
    shifted = torch.hstack((labels[..., 1:], ignore_cache[: labels.shape[0]]))
    if not isinstance(logits, list):
        shifted = shifted.reshape(-1)
        logits = logits.reshape(-1, logits.size(-1))
    loss = loss_fn(logits, shifted)
    del logits  # recipe: "free logits otherwise it peaks backward memory"
    loss = loss * num_tokens
    tracker.set_phase("backward")
    with gpu_gradient_accumulation(tracker, loss):
        loss.backward()
    del loss
    if setup.optimizer_in_backward:
        tracker.set_phase("idle")
        return
    training.scale_grads(model, 1 / num_tokens)
    tracker.set_phase("optimizer")
    optimizer = next(iter(optimizers.values()))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker.set_phase("idle")


def recipe_loss_fn(model, setup: TrainingSetup):
    if setup.loss is Loss.CHUNKED:
        from torchtune.modules.loss import CEWithChunkedOutputLoss

        loss_fn = CEWithChunkedOutputLoss(ignore_index=IGNORE_INDEX)
        model.set_num_output_chunks(loss_fn.num_output_chunks)  # recipe: _setup_model's caller
        return loss_fn
    if setup.loss is Loss.STANDARD:
        return torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    raise NotModelledError(f"--stack torchtune with --loss {setup.loss.value} is not modelled")


def recipe_optimizers(params, setup: TrainingSetup) -> dict[int, torch.optim.Optimizer]:
    """One optimizer for all trainable parameters, or one per parameter (optimizer_in_bwd)."""
    options = dict(lr=3e-4, weight_decay=0.01)  # 8B_lora_single_device.yaml
    options |= {"fused": True} if setup.optimizer is Optimizer.ADAMW_FUSED else {"foreach": True}
    if setup.optimizer_in_backward:
        return {id(p): torch.optim.AdamW([p], **options) for p in params}
    shared = torch.optim.AdamW(params, **options)
    return {id(p): shared for p in params}


def _step_in_backward(optimizer):
    """torchtune/training/memory.py register_optim_in_bwd_hooks: optim_step."""

    def optim_step(param) -> None:
        optimizer.step()
        optimizer.zero_grad()

    return optim_step


def _track_model(model, tracker: LiveBytesTracker, owners: dict[int, str]) -> None:
    for param in model.parameters():
        owner = owners.get(id(param), "(model)")
        if is_nf4(param):
            tracker.track_all(nf4_inner_tensors(param), PARAMETERS, owner)
        else:
            tracker.tag(param, PARAMETERS, owner)
    tracker.track_all(model.buffers(), PARAMETERS)
