"""`device_map="auto"` training (naive model parallelism): the layers split over one process's GPUs.

accelerate's infer_auto_device_map with get_balanced_memory (accelerate/utils/modeling.py) spreads the decoder layers
evenly, keeps the input embedding on the first GPU and the final norm and lm_head on the last (a tied lm_head stays
with the embedding it shares). Only one GPU computes at a time, and each keeps its own layers' weights, gradients,
optimizer states and saved activations. Each GPU is estimated as a model of its own layers, without the root
parameters another GPU holds; the answer is the fullest GPU.
"""

from __future__ import annotations

from vramplan.estimate.optimizer import optimizer_memory
from vramplan.estimate.shards import EMBEDDING, LM_HEAD, model_units, unit_named
from vramplan.estimate.weights import trainable_bytes_per_param, weight_memory
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Strategy, TrainingSetup


def layer_split(layers: int, gpus: int) -> list[range]:
    """Contiguous decoder-layer ranges per GPU, as even as the count allows (earlier GPUs take the remainder)."""
    base, extra = divmod(layers, gpus)
    ranges, start = [], 0
    for gpu in range(gpus):
        count = base + (1 if gpu < extra else 0)
        ranges.append(range(start, start + count))
        start += count
    return ranges


def _sub_spec(spec: ModelSpec, layers: range) -> ModelSpec:
    """The model of one GPU's layers, their kinds (sliding-window, dense or MoE) renumbered from 0."""
    sliding = tuple(i - layers.start for i in spec.sliding_layer_ids if i in layers)
    update = {"num_layers": len(layers), "sliding_layer_ids": sliding}
    if spec.moe is not None:
        dense = tuple(i - layers.start for i in spec.moe.dense_layer_ids if i in layers)
        update["moe"] = spec.moe.model_copy(update={"dense_layer_ids": dense})
    return spec.model_copy(update=update)


def _root_tensor_bytes(spec: ModelSpec, setup: TrainingSetup, which: str) -> dict[str, int]:
    """Weights (and, under full fine-tuning, gradient and optimizer states) of the embedding or the lm_head."""
    unit = unit_named(model_units(spec, setup), EMBEDDING if which == "embedding" else LM_HEAD)
    tensor = unit.tensors[0]
    held = {"weights": tensor.nbytes}
    if setup.method is Method.FULL:
        width = trainable_bytes_per_param(setup)
        held["gradients"] = tensor.nbytes
        held["optimizer_states"] = optimizer_memory(
            setup.optimizer, [(tensor.rows, tensor.numel // tensor.rows)], width
        ).state_bytes
    return held


def estimate_device_map(model: ResolvedModel, setup: TrainingSetup):
    from vramplan.estimate import estimate_memory
    from vramplan.estimate.peak import estimate_from_phases
    from vramplan.result import PhasePeak

    spec = model.spec
    if setup.gpus > spec.num_layers:
        from vramplan.errors import UsageError

        raise UsageError(f"--gpus {setup.gpus} is more than the model's {spec.num_layers} decoder layers")
    single = setup.model_copy(update={"gpus": 1, "strategy": Strategy.SINGLE})
    split = layer_split(spec.num_layers, setup.gpus)
    logits_gpu = 0 if spec.tie_word_embeddings else setup.gpus - 1
    per_gpu, paged = [], []
    for gpu, layers in enumerate(split):
        sub = estimate_memory(model.model_copy(update={"spec": _sub_spec(spec, layers)}), single)
        remove: dict[str, int] = {}
        if gpu != 0:
            for key, value in _root_tensor_bytes(spec, setup, "embedding").items():
                remove[key] = remove.get(key, 0) + value
        if gpu != logits_gpu and not spec.tie_word_embeddings:
            for key, value in _root_tensor_bytes(spec, setup, "lm_head").items():
                remove[key] = remove.get(key, 0) + value
        phases = []
        for phase in sub.phases:
            components = dict(phase.components)
            if gpu != logits_gpu:
                components.pop("logits_loss", None)
            for key, value in remove.items():
                if key in components:
                    components[key] = max(0, components[key] - value)
            phases.append(PhasePeak(phase=phase.phase, components=components))
        per_gpu.append(phases)
        paged.append(sub.paged_optimizer_bytes)
    fullest = max(range(setup.gpus), key=lambda g: max(p.total_bytes for p in per_gpu[g]))
    whole = weight_memory(spec, single)  # the parameter counts; no second estimate of the whole model
    per_gpu_peaks = ", ".join(
        f"GPU {g}: layers {r.start}-{r.stop - 1}, {max(p.total_bytes for p in per_gpu[g]) / 2**30:.2f} GiB"
        for g, r in enumerate(split)
    )
    return estimate_from_phases(
        model, setup, per_gpu[fullest], total_params=whole.total_params, trainable_params=whole.trainable_params,
        paged_bytes=paged[fullest],
        notes=[
            f"device-map: decoder layers split over {setup.gpus} GPUs of one process; only one computes at a "
            f"time; the fullest is GPU {fullest} ({per_gpu_peaks})",
        ],
    )

