"""TRL's DPO step on one GPU (trl/trainer/dpo_trainer.py `DPOTrainer._compute_loss`, TRL 1.16), composed from the
Hugging Face step's terms (hf.py) at twice the rows, TRL's fused head (components/trl_head.py) in place of the
logits, and the reference forward.

In `_compute_loss` the policy's forward runs first over the concatenated chosen and rejected rows, keeping its
activations and its head's saved rows; then the reference forward runs under `torch.no_grad()` beside them (for
full fine-tuning a frozen copy of the model in its dtype, loaded by DPOTrainer.__init__; under peft the policy with
its adapters disabled); then the loss and backward. Traced: vramplan/measure/trl_dpo.py.
"""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import hidden_state_bytes
from vramplan.estimate.components.activations.mlp import mlp_forward_transient_bytes
from vramplan.estimate.components.activations.norms import final_norm_forward_bytes, final_norm_saved_bytes
from vramplan.estimate.components.trl_head import fused_head_memory, without_head_copy
from vramplan.estimate.compose.hf import backward_peak, estimate_with_step, forward_peak, step_parts
from vramplan.estimate.compose.parts import in_flight
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.single import with_fused_head_gradient
from vramplan.estimate.strategies.states import FORWARD_LAYER, FORWARD_LOGITS
from vramplan.models.catalog import ResolvedModel
from vramplan.result import Estimate, PhasePeak
from vramplan.training import Method, TrainingSetup

REFERENCE = "reference_model"


def estimate_dpo(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    rows = setup.model_copy(update={"batch_size": setup.rows, "objective": "sft", "prompt_len": None})
    tokens = rows.tokens_per_step
    states = with_fused_head_gradient(rank_states(spec, rows))
    parts = step_parts(spec, rows, states)
    head = fused_head_memory(spec, rows, setup.labelled_tokens)
    # dpo_trainer.py __init__: full fine-tuning loads the reference model in the policy's dtype; under peft the
    # reference is the base model with the adapters disabled (no second copy)
    # precompute_ref_log_probs: the reference log-probs are columns of the dataset, computed before training
    # (dpo_trainer.py __init__ sets ref_model None on one GPU; _compute_loss reads them from the batch)
    reference = states.weights if setup.method is Method.FULL and not setup.precompute_ref else 0
    persistent = {**parts.persistent, REFERENCE: reference}
    parts = parts.model_copy(update={"logits": head, "persistent": persistent,
                                   "copies": without_head_copy(spec, rows, parts.copies)})
    forward = forward_peak(spec, rows, parts)
    # Beside the policy's kept activations and its head's saved rows: the reference's last layer (no_grad: its
    # transients only) and the reference's head.
    policy_kept = parts.kept + parts.inputs + final_norm_saved_bytes(spec, rows, tokens) + head.saved_bytes
    reference_head = PhasePeak(phase="forward", components={
        **persistent,
        "activations": policy_kept + parts.hidden + final_norm_forward_bytes(spec, rows),
        "autocast_weight_copies": parts.copies.forward_bytes,
        "logits_loss": head.forward_peak_bytes,
        **in_flight(states, FORWARD_LOGITS),
    })
    # the reference layer runs under no_grad: its MLP's tensors are all transient, as in a checkpointed layer's forward
    no_grad = rows.model_copy(update={"gradient_checkpointing": True})
    reference_layer = PhasePeak(phase="forward", components={
        **persistent,
        "activations": policy_kept + hidden_state_bytes(spec, rows, tokens)
        + mlp_forward_transient_bytes(spec, no_grad, tokens),
        "autocast_weight_copies": parts.copies.forward_bytes,
        **in_flight(states, FORWARD_LAYER),
    })
    candidates = [forward] if setup.precompute_ref else [forward, reference_head, reference_layer]
    forward = max(candidates, key=lambda p: p.total_bytes)
    return estimate_with_step(model, setup, rows, parts, forward, backward_peak(spec, rows, parts))
