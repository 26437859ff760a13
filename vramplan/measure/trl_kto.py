"""TRL's KTO loss path (trl/trainer/kto_trainer.py `KTOTrainer._compute_loss`, TRL 1.16) run on CPU under fake
tensors with its fused LM head on the GPU path, its live bytes counted (a recipe on `fake_step`, beside trl_dpo.py).

What runs is TRL's own code at KTOConfig's defaults (loss "kto", so the KL term): the policy's forward under
`no_grad` over the mismatched KL rows, the policy's forward over the batch rows, then under `no_grad` the
reference's KL and batch forwards (a frozen copy for full fine-tuning; the adapter-disabled policy under peft),
the loss and backward. The trainer is a namespace holding what `_compute_loss` reads.

Fake tensors cannot evaluate data: half of each batch is desirable (`torch.nonzero` of the labels answers the first
half, of their negation the rest, `_HalfDesirable`), and the metrics' `.item()` and truth tests answer constants
(`_MetricAnswers`); both touch per-row scalars only. Every row is `seq_len` tokens (unpadded), `prompt_len` of them
prompt.
"""

from __future__ import annotations

import types
from collections import defaultdict
from typing import Any

import torch

from vramplan.measure.build import make_optimizer
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
from vramplan.measure.hf_step import quiet_libraries, step_autocast, track_model
from vramplan.measure.livebytes import LiveBytesTracker
from vramplan.measure.trl_dpo import gpu_fused_head, policy_and_reference, unpadded_rows
from vramplan.training import Method, TrainingSetup

# KTOConfig defaults (trl/trainer/kto_config.py, TRL 1.16): beta 0.1, loss_type "kto", desirable_weight and
# undesirable_weight 1.0.
KTO_BETA = 0.1
# The outputs KTOTrainer asks its fused head for (kto_trainer.py __init__: add_fused_lm_head(..., outputs=...)).
KTO_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits")


class _HalfDesirable(torch.overrides.TorchFunctionMode):
    """`torch.nonzero` of the 1-D label masks: the first half of the rows desirable, the rest not."""

    def __init__(self, rows: int):
        super().__init__()
        self.answers = [rows // 2, rows - rows // 2]
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nonzero and args and args[0].dim() == 1 and args[0].dtype == torch.bool:
            count = self.answers[self.calls % 2]
            self.calls += 1
            return torch.arange(count, dtype=torch.long).unsqueeze(1)
        return func(*args, **kwargs)


class _MetricAnswers(torch.overrides.TorchFunctionMode):
    """The metrics' `.item()` and truth tests on fake scalars: constants (they steer no allocation)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.item:
            return 1.0
        if func is torch.Tensor.__bool__:
            return True
        return func(*args, **(kwargs or {}))


def kto_trainer_namespace(model, ref_model, setup: TrainingSetup, autocast):
    """The attributes KTOTrainer._compute_loss reads, at KTOConfig's defaults."""
    accelerator = types.SimpleNamespace(
        unwrap_model=lambda module: module, device=torch.device("cpu"), gather_for_metrics=lambda value: value,
        gather=lambda value: value, autocast=lambda: autocast(), is_main_process=True)
    args = types.SimpleNamespace(gradient_checkpointing=setup.gradient_checkpointing,
                                 gradient_checkpointing_kwargs=None)
    trainer = types.SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=accelerator, args=args, aux_loss_enabled=False,
        calculate_KL=True, precompute_ref_logps=setup.precompute_ref, loss_type="kto", beta=KTO_BETA,
        desirable_weight=1.0, undesirable_weight=1.0, _metrics={"train": defaultdict(list)}, _total_train_tokens=0,
        _tp_size=1,
    )
    from trl.trainer.kto_trainer import KTOTrainer

    trainer._compute_kl_logps = lambda scorer, batch: KTOTrainer._compute_kl_logps(trainer, scorer, batch)
    return trainer


def trace_kto_step(config: dict[str, Any], setup: TrainingSetup, seed: int = 0) -> StepTrace:
    """Peak live bytes of a steady-state KTO step: `setup.batch_size` rows of `setup.seq_len` tokens (prompt
    `setup.prompt_len`), each with its KL row."""
    if setup.objective != "kto":
        raise ValueError("trace_kto_step needs a setup with objective kto")
    with quiet_libraries():
        return _trace(config, setup, seed)


def _trace(config: dict[str, Any], setup: TrainingSetup, seed: int) -> StepTrace:
    from trl.trainer.kto_trainer import KTOTrainer

    torch.manual_seed(seed)
    mode = fake_mode()
    # kto_trainer.py __init__: a second model in the policy's dtype (none with precompute_ref_log_probs)
    model, reference = policy_and_reference(config, setup, mode, KTO_HEAD_OUTPUTS,
                                            setup.method is Method.FULL and not setup.precompute_ref)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker()
    hooks = tag_gradients(params, tracker, owners)
    autocast = step_autocast(setup)
    trainer = kto_trainer_namespace(model, reference, setup, autocast)
    rows, length, prompt = setup.batch_size, setup.seq_len, setup.prompt_len or 1
    labelled = rows * (length - prompt)  # the completion's next-token labels of every row
    optimizer = make_optimizer(params, setup.optimizer)

    def forward(inputs):
        with autocast():
            return KTOTrainer._compute_loss(trainer, model, inputs, False)

    with removing(hooks), mode, as_on_gpu(), unpadded_rows(), gpu_fused_head(labelled), _HalfDesirable(rows), \
            _MetricAnswers(), attribute_modules(model, tracker), tracker:
        completion = torch.zeros(rows, length, dtype=torch.long)
        completion[:, prompt:] = 1
        inputs = {"input_ids": torch.randint(0, int(config["vocab_size"]), (rows, length)),
                  "attention_mask": torch.ones(rows, length, dtype=torch.long), "completion_mask": completion,
                  "KL_input_ids": torch.randint(0, int(config["vocab_size"]), (rows, length)),
                  "KL_attention_mask": torch.ones(rows, length, dtype=torch.long),
                  "KL_completion_mask": completion.clone(), "label": torch.zeros(rows, dtype=torch.bool)}
        if setup.precompute_ref:  # the dataset's precomputed columns, one fp32 per row each
            inputs["ref_logps"] = torch.zeros(rows)
            inputs["ref_KL_logps"] = torch.zeros(rows)
        track_model(model, tracker, owners)
        if reference is not None:
            track_model(reference, tracker, parameter_owners(reference))

        measure_optimizer_step(tracker, params, owners, optimizer, lambda: forward(inputs))
    return model_step_trace(tracker, model, params)
