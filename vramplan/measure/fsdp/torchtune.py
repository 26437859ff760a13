"""Rank 0 of torchtune's distributed recipes (full_finetune_distributed.py, lora_finetune_distributed.py, torchtune
0.6.1) over a fake process group: the model built as the single-device trace builds it (bf16, adapters included;
activation checkpointing before sharding, as the recipes apply it), then `training.shard_model` with the recipes'
`get_shard_conditions` (`fully_shard` on every `layers.i`, then the root), raw FSDP2 with no MixedPrecisionPolicy:
parameters are gathered in the model's own bf16 and nothing is upcast. The step is the single-device trace's
(`torchtune_step.recipe_training_step`); its allocations are filed by `fsdp.tracker` as for the HF FSDP2 trace."""

from __future__ import annotations

import functools
from typing import Any

import torch

from vramplan.measure.cuda_paths import dropout_as_on_cuda
from vramplan.measure.fake_step import (
    attribute_modules,
    create_optimizer_states,
    fake_mode,
    measure_steady_step,
    module_name,
    removing,
    tag_optimizer_states,
)
from vramplan.measure.fsdp.shard import MESH_DIM, describe_units
from vramplan.measure.fsdp.tracker import (
    SHARDED_PARAMETERS,
    FsdpLiveBytesTracker,
    instrument_fsdp,
    local_tensor,
    sharded_gradient_hooks,
    step_peaks,
    track_sharded_parameters,
)
from vramplan.training import TrainingSetup


def shard_like_torchtune(model, world_size: int, offload_params: bool, fake_mode):
    """torchtune/training/_distributed.py `shard_model` as the distributed recipes call it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torchtune import training

    # Built outside fake mode: the mesh reads its rank table as Python ints.
    mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=(MESH_DIM,))
    with fake_mode:
        return _shard(training, model, mesh, offload_params)


def _shard(training, model, mesh, offload_params: bool):
    conditions = [functools.partial(training.get_shard_conditions, names_to_match=None)]
    training.shard_model(model=model, shard_conditions=conditions, cpu_offload=offload_params,
                         reshard_after_forward=True, dp_mesh=mesh)
    return model


def trace_torchtune_fsdp(config: dict[str, Any], family: str, setup: TrainingSetup, world_size: int,
                         offload_params: bool = False) -> dict[str, Any]:
    """The FsdpStepTrace fields of one steady torchtune distributed step (the process group must exist)."""
    from vramplan.measure.torchtune_build import build_meta_model, is_nf4, materialise_fake, nf4_inner_tensors
    from vramplan.measure.torchtune_step import (
        recipe_batch,
        recipe_loss_fn,
        recipe_optimizers,
        recipe_training_step,
        refuse_untraceable_torchtune,
    )

    refuse_untraceable_torchtune(setup)
    torch.manual_seed(0)
    mode = fake_mode()
    model = build_meta_model(config, family, setup, device="meta")
    materialise_fake(model, mode)
    total_params = sum(p.numel() for p in model.parameters())
    nf4 = [(name, nf4_inner_tensors(p)) for name, p in model.named_parameters() if is_nf4(p)]
    model = shard_like_torchtune(model, world_size, offload_params, mode)
    loss_fn = recipe_loss_fn(model, setup)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = {id(p): module_name(name.rsplit(".", 1)[0]) for name, p in model.named_parameters()}
    tracker = FsdpLiveBytesTracker(host_phases=("warmup", "optimizer") if offload_params else ())
    gradient_dtypes: set[str] = set()
    hooks = sharded_gradient_hooks(params, tracker, owners, offload_params, gradient_dtypes)
    optimizers = recipe_optimizers(params, setup)
    optimizer = next(iter(optimizers.values()))
    batch: list[torch.Tensor] = []

    def warm_up() -> None:
        create_optimizer_states(params, [optimizer])
        if not offload_params:
            tag_optimizer_states(optimizer, tracker, owners, unwrap=local_tensor)

    def step() -> None:
        batch[:] = recipe_batch(config, setup)
        recipe_training_step(model, loss_fn, *batch, optimizers, setup, tracker, None)

    with (removing(hooks), mode, dropout_as_on_cuda(), attribute_modules(model, tracker), tracker,
          instrument_fsdp(tracker)):
        tracker.set_phase("idle")
        track_sharded_parameters(model, tracker, owners, offload_params, skip=is_nf4)
        for name, tensors in nf4:  # an NF4 shard's bytes are its inner tensors
            tracker.track_all(tensors, SHARDED_PARAMETERS, name)
        measure_steady_step(tracker, warm_up, step)
    return dict(
        world_size=world_size, reshard_after_forward=True, offload_params=offload_params, **step_peaks(tracker),
        units=describe_units(model), mixed_precision={"param_dtype": None, "reduce_dtype": None,
                                                      "output_dtype": None},
        gradient_dtypes=sorted(gradient_dtypes), idle_bytes=tracker.live_bytes, total_params=total_params,
        trainable_params=sum(p.numel() for p in params),
        allocation_events=list(tracker.events),  # a copy: the states' finalizers append frees once this returns
    )
