"""`device_map="auto"` training (naive model parallelism): the layers split over one process's GPUs.

accelerate's infer_auto_device_map with get_balanced_memory (accelerate/utils/modeling.py) spreads the decoder layers
evenly, keeps the input embedding on the first GPU and the final norm and lm_head on the last (a tied lm_head stays
with the embedding it shares). Only one GPU computes at a time, and each keeps its own layers' weights, gradients,
optimizer states and saved activations. Each GPU is estimated as a model of its own layers (compose/device_map.py
runs that estimate), without the root parameters another GPU holds; the answer is the fullest GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from vramplan.errors import UsageError
from vramplan.estimate.components.optimizer import optimizer_memory
from vramplan.estimate.dtypes import trainable_bytes_per_param
from vramplan.estimate.params import EMBEDDING, LM_HEAD, model_units, unit_named
from vramplan.models.spec import ModelSpec
from vramplan.result import PhasePeak
from vramplan.training import Method, TrainingSetup


class GpuShare(BaseModel):
    """One GPU of the map: its decoder layers as a model of their own, and what of the whole model's roots it lacks."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    layers: range
    spec: ModelSpec
    holds_logits: bool  # lm_head (and the loss) run here
    lacks: tuple[str, ...]  # "embedding", "lm_head": root modules another GPU holds


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


def gpu_shares(spec: ModelSpec, setup: TrainingSetup) -> list[GpuShare]:
    """Each GPU's layers, whether it runs the logits, and the root modules it does not hold."""
    if setup.gpus > spec.num_layers:
        raise UsageError(f"--gpus {setup.gpus} is more than the model's {spec.num_layers} decoder layers")
    logits_gpu = 0 if spec.tie_word_embeddings else setup.gpus - 1
    shares = []
    for gpu, layers in enumerate(layer_split(spec.num_layers, setup.gpus)):
        lacks = (("embedding",) if gpu != 0 else ()) + (
            ("lm_head",) if gpu != logits_gpu and not spec.tie_word_embeddings else ())
        shares.append(GpuShare(layers=layers, spec=_sub_spec(spec, layers), holds_logits=gpu == logits_gpu,
                               lacks=lacks))
    return shares


def gpu_phases(spec: ModelSpec, setup: TrainingSetup, share: GpuShare, phases: list[PhasePeak]) -> list[PhasePeak]:
    """One GPU's phase peaks: those of its layers' model, less the logits (elsewhere) and the roots it lacks."""
    removed: dict[str, int] = {}
    for which in share.lacks:
        for key, value in _root_tensor_bytes(spec, setup, which).items():
            removed[key] = removed.get(key, 0) + value
    held = []
    for phase in phases:
        components = dict(phase.components)
        if not share.holds_logits:
            components.pop("logits_loss", None)
        for key, value in removed.items():
            if key in components:
                components[key] = max(0, components[key] - value)
        held.append(PhasePeak(phase=phase.phase, components=components))
    return held


def device_map_note(shares: list[GpuShare], peaks: list[int], fullest: int) -> str:
    per_gpu_peaks = ", ".join(
        f"GPU {g}: layers {share.layers.start}-{share.layers.stop - 1}, {peaks[g] / 2**30:.2f} GiB"
        for g, share in enumerate(shares)
    )
    return (f"device-map: decoder layers split over {len(shares)} GPUs of one process; only one computes at a "
            f"time; the fullest is GPU {fullest} ({per_gpu_peaks})")
