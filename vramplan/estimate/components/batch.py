"""The batch on the GPU: token ids, labels and shifted labels (int64), and the attention masks a model builds once."""

from __future__ import annotations

from vramplan.estimate.components.activations.attention import model_mask_bytes
from vramplan.estimate.dtypes import INT64_BYTES, tensor_bytes
from vramplan.models.spec import ModelSpec
from vramplan.training import TrainingSetup


def hf_batch_bytes(spec: ModelSpec, setup: TrainingSetup) -> int:
    """Hugging Face stacks: token ids and labels (int64), shifted labels; a sliding-window model's bool mask."""
    return 3 * tensor_bytes(setup.tokens_per_step * INT64_BYTES) + model_mask_bytes(spec, setup)


def torchtune_batch_bytes(setup: TrainingSetup) -> int:
    """torchtune recipes: tokens and labels (int64) and the recipe's ignore_labels_cache, plus the shifted labels
    (`hstack`)."""
    tokens = setup.tokens_per_step
    batch = 2 * tensor_bytes(tokens * INT64_BYTES) + tensor_bytes(setup.batch_size * INT64_BYTES)
    return batch + tensor_bytes(tokens * INT64_BYTES)
