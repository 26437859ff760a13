"""TRL's ORPO loss path (trl/experimental/orpo/orpo_trainer.py `ORPOTrainer.compute_loss`, TRL 1.16) run on CPU
under fake tensors, its live bytes counted (a recipe on `fake_step`, beside trl_dpo.py).

What runs is TRL's own code at ORPOConfig's defaults (beta 0.1): `concatenated_inputs` (chosen and rejected rows
into 2 x pairs), the policy's forward with accelerate's wrapping as Trainer prepares it (autocast, then
`convert_outputs_to_fp32` of the returned logits), the chosen rows' NLL (`cross_entropy_loss`: a contiguous copy of
the shifted logits and their log-softmax), `get_batch_logps` over every row through `selective_log_softmax`, the
odds-ratio loss and the metrics. Unlike DPOTrainer, ORPOTrainer has no fused LM head: the b x s x V logits exist.

On a GPU `selective_log_softmax` takes TRL's Triton kernel (trl/kernels/logprob_entropy.py
`_LogProbEntropyFunction`: it keeps the logits for backward and allocates per-token fp32 outputs; its backward one
gradient of the logits' shape); here `_supports_trl_loss_kernel` answers True and the kernel launches are no-ops, so
the Python side allocates what it allocates on a GPU. Every row is `seq_len` tokens (unpadded).
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch

from vramplan.measure.build import build_fake_model, make_optimizer
from vramplan.measure.cuda_paths import as_on_gpu
from vramplan.measure.fake_step import (
    StepTrace,
    attribute_modules,
    fake_mode,
    measure_optimizer_step,
    model_step_trace,
    parameter_owners,
    removing,
    tag_gradients,
)
from vramplan.measure.hf_step import prepared_forward, quiet_libraries, track_model
from vramplan.measure.livebytes import LiveBytesTracker
from vramplan.measure.trl_dpo import MetricValue, NoKernel, unpadded_rows
from vramplan.training import TrainingSetup

# ORPOConfig defaults (trl/experimental/orpo/orpo_config.py, TRL 1.16): beta 0.1 (the paper's lambda).
ORPO_BETA = 0.1


@contextlib.contextmanager
def gpu_logprob_kernel():
    """`selective_log_softmax` on its GPU path: TRL's Triton log-prob kernel, its launches no-ops (see above)."""
    from trl.kernels import logprob_entropy
    from trl.trainer import utils as trl_utils

    saved = (trl_utils._supports_trl_loss_kernel, logprob_entropy._forward_kernel, logprob_entropy._backward_kernel)
    trl_utils._supports_trl_loss_kernel = lambda *args, **kwargs: True
    logprob_entropy._forward_kernel = logprob_entropy._backward_kernel = NoKernel()
    try:
        yield
    finally:
        trl_utils._supports_trl_loss_kernel, logprob_entropy._forward_kernel, logprob_entropy._backward_kernel = saved


def orpo_trainer_namespace(setup: TrainingSetup):
    """The attributes ORPOTrainer.compute_loss and the methods it calls read, at ORPOConfig's defaults."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    metric = MetricValue()
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda value: metric)
    trainer = types.SimpleNamespace(
        is_encoder_decoder=False, padding_value=0, accelerator=accelerator, aux_loss_enabled=False, beta=ORPO_BETA,
        _peft_has_been_casted_to_bf16=False, args=types.SimpleNamespace(device=torch.device("cpu")),
        store_metrics=lambda metrics, train_eval="train": None,
        concatenated_inputs=ORPOTrainer.concatenated_inputs, get_batch_logps=ORPOTrainer.get_batch_logps,
    )
    for name in ("concatenated_forward", "odds_ratio_loss", "get_batch_loss_metrics"):
        setattr(trainer, name, types.MethodType(getattr(ORPOTrainer, name), trainer))
    return trainer


def trace_orpo_step(config: dict[str, Any], setup: TrainingSetup, seed: int = 0) -> StepTrace:
    """Peak live bytes of a steady-state ORPO step: `setup.batch_size` pairs of `setup.seq_len` tokens each."""
    if setup.objective != "orpo":
        raise ValueError("trace_orpo_step needs a setup with objective orpo")
    with quiet_libraries():
        return _trace(config, setup, seed)


def _trace(config: dict[str, Any], setup: TrainingSetup, seed: int) -> StepTrace:
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    torch.manual_seed(seed)
    mode = fake_mode()
    model = build_fake_model(config, setup, mode)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker()
    hooks = tag_gradients(params, tracker, owners)
    trainer = orpo_trainer_namespace(setup)
    forward_model = prepared_forward(model, setup)
    pairs, length, vocab = setup.batch_size, setup.seq_len, int(config["vocab_size"])
    optimizer = make_optimizer(params, setup.optimizer)

    def forward(inputs):
        return ORPOTrainer.compute_loss(trainer, forward_model, inputs)

    with removing(hooks), mode, as_on_gpu(), unpadded_rows(), gpu_logprob_kernel(), \
            attribute_modules(model, tracker), tracker:
        inputs = {}
        for side in ("chosen", "rejected"):  # the collator's padded rows, every one seq_len tokens
            inputs[f"{side}_input_ids"] = torch.randint(0, vocab, (pairs, length))
            inputs[f"{side}_attention_mask"] = torch.ones(pairs, length, dtype=torch.long)
            inputs[f"{side}_labels"] = torch.randint(0, vocab, (pairs, length))
        track_model(model, tracker, owners)

        measure_optimizer_step(tracker, params, owners, optimizer, lambda: forward(inputs))
    return model_step_trace(tracker, model, params)
