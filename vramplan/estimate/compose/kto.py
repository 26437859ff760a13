"""TRL's KTO step on one GPU (trl/trainer/kto_trainer.py `KTOTrainer._compute_loss`, TRL 1.16, loss "kto"): the
Hugging Face step's terms (hf.py) over the batch rows, TRL's fused head (components/trl_head.py) in place of the
logits, and three `no_grad` forwards around it.

In `_compute_loss` the policy first scores the mismatched KL rows under `no_grad` (nothing of the step exists yet),
then runs its forward over the batch rows, keeping its activations and its head's saved rows; then the reference
scores the KL rows and the batch rows under `no_grad` beside them (a frozen copy in the policy's dtype for full
fine-tuning; under peft the policy with its adapters disabled; neither with precompute_ref_log_probs); then the loss
and backward. Traced: vramplan/measure/trl_kto.py.
"""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import hidden_state_bytes
from vramplan.estimate.components.activations.norms import final_norm_forward_bytes, final_norm_saved_bytes
from vramplan.estimate.components.trl_head import fused_head_memory, without_head_copy
from vramplan.estimate.compose.dpo import REFERENCE
from vramplan.estimate.compose.grpo import no_grad_layer_bytes
from vramplan.estimate.compose.hf import backward_peak, estimate_with_step, forward_peak, step_parts
from vramplan.estimate.compose.parts import in_flight
from vramplan.estimate.dtypes import INT64_BYTES, tensor_bytes
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.single import with_fused_head_gradient
from vramplan.estimate.strategies.states import FORWARD_LAYER, FORWARD_LOGITS
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.result import Estimate, PhasePeak
from vramplan.training import Method, TrainingSetup

# The batch KTOTrainer's collator hands the step (kto_trainer.py DataCollatorForUnpairedPreference): input_ids,
# attention_mask, completion_mask and their KL_ twins, int64 rows x seq each; plus `_compute_loss`'s
# completion_labels (input_ids.masked_fill), alive through the step.
KTO_BATCH_TENSORS = 7
# The per-row outputs KTOTrainer asks its policy's fused head for: log_probs, entropy, mean_logits (fp32).
KTO_FP32_OUTPUTS = 3


def kto_batch_bytes(setup: TrainingSetup) -> int:
    return KTO_BATCH_TENSORS * tensor_bytes(setup.tokens_per_step * INT64_BYTES)


def estimate_kto(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    rows = setup.model_copy(update={"objective": "sft", "prompt_len": None})
    tokens = rows.tokens_per_step
    states = with_fused_head_gradient(rank_states(spec, rows))
    parts = step_parts(spec, rows, states)
    labelled = setup.labelled_tokens
    head = fused_head_memory(spec, rows, labelled, fp32_outputs=KTO_FP32_OUTPUTS, bool_outputs=0)
    # kto_trainer.py __init__: full fine-tuning loads the reference model in the policy's dtype; peft disables the
    # adapters instead; precompute_ref_log_probs needs neither in the step
    reference = states.weights if setup.method is Method.FULL and not setup.precompute_ref else 0
    persistent = {**parts.persistent, REFERENCE: reference}
    parts = parts.model_copy(update={"logits": head, "persistent": persistent, "inputs": kto_batch_bytes(rows),
                                     "copies": without_head_copy(spec, rows, parts.copies)})
    points = [forward_peak(spec, rows, parts), *_no_grad_points(spec, rows, parts, labelled, kept=0, policy=True)]
    if not setup.precompute_ref:
        policy_kept = parts.kept + final_norm_saved_bytes(spec, rows, tokens) + head.saved_bytes
        points += _no_grad_points(spec, rows, parts, labelled, kept=policy_kept,
                                  policy=setup.method is not Method.FULL)
    forward = max(points, key=lambda p: p.total_bytes)
    return estimate_with_step(model, setup, rows, parts, forward, backward_peak(spec, rows, parts))


def _no_grad_points(spec: ModelSpec, rows: TrainingSetup, parts, labelled: int, kept: int,
                    policy: bool) -> list[PhasePeak]:
    """A `no_grad` forward over the rows beside `kept` bytes of the policy's forward: its last layer and its head.
    `policy`: the scorer runs the policy's head (its three outputs; adapters on unless they are disabled, which
    leaves the base layers alike) rather than the reference copy's (log_probs alone)."""
    tokens = rows.tokens_per_step
    outputs = KTO_FP32_OUTPUTS if policy else 1
    head = fused_head_memory(spec, rows, labelled, fp32_outputs=outputs, bool_outputs=0)
    # the KL rows' labels, made beside the batch (KL_input_ids.masked_fill)
    inputs = parts.inputs + tensor_bytes(tokens * INT64_BYTES)
    no_grad = rows.model_copy(update={"gradient_checkpointing": True})
    head_point = PhasePeak(phase="forward", components={
        **parts.persistent,
        "activations": kept + inputs + hidden_state_bytes(spec, rows, tokens) + final_norm_forward_bytes(spec, rows),
        "autocast_weight_copies": parts.copies.forward_bytes if kept else 0,
        "logits_loss": head.forward_peak_bytes,
        **in_flight(parts.states, FORWARD_LOGITS),
    })
    layer_point = PhasePeak(phase="forward", components={
        **parts.persistent,
        "activations": kept + inputs + no_grad_layer_bytes(spec, no_grad, tokens, adapters_run=policy and kept == 0),
        "autocast_weight_copies": parts.copies.forward_bytes if kept else 0,
        **in_flight(parts.states, FORWARD_LAYER),
    })
    return [head_point, layer_point]
