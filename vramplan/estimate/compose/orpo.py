"""TRL's ORPO step on one GPU (trl/experimental/orpo/orpo_trainer.py `ORPOTrainer.compute_loss`, TRL 1.16): the
Hugging Face step's terms (hf.py) at twice the rows (chosen and rejected concatenated), no reference model, and
ORPO's loss on the full logits (components/orpo_loss.py) in place of the standard cross-entropy. Traced:
vramplan/measure/trl_orpo.py.
"""

from __future__ import annotations

from vramplan.estimate.components.orpo_loss import orpo_logits_memory
from vramplan.estimate.compose.hf import backward_peak, estimate_with_step, forward_peak, step_parts
from vramplan.estimate.dtypes import INT64_BYTES, tensor_bytes
from vramplan.estimate.strategies import rank_states
from vramplan.models.catalog import ResolvedModel
from vramplan.result import Estimate
from vramplan.training import TrainingSetup

# The int64 rows x seq tensors alive through ORPO's step: the collator's chosen_/rejected_ input_ids,
# attention_mask and labels (three of the rows' size), concatenated_inputs' copies of them (three more), and
# concatenated_forward's labels (`torch.where(attention_mask == 1, labels, -100)`).
ORPO_BATCH_TENSORS = 7


def orpo_batch_bytes(rows: TrainingSetup) -> int:
    return ORPO_BATCH_TENSORS * tensor_bytes(rows.tokens_per_step * INT64_BYTES)


def estimate_orpo(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    rows = setup.model_copy(update={"batch_size": setup.rows, "objective": "sft", "prompt_len": None})
    states = rank_states(spec, rows)
    parts = step_parts(spec, rows, states)
    parts = parts.model_copy(update={"logits": orpo_logits_memory(spec, rows), "inputs": orpo_batch_bytes(rows)})
    return estimate_with_step(model, setup, rows, parts, forward_peak(spec, rows, parts),
                              backward_peak(spec, rows, parts))
