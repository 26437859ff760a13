"""TRL's DPO loss path (trl/trainer/dpo_trainer.py `DPOTrainer._compute_loss`, TRL 1.16) run on CPU under fake
tensors, with its fused LM head on the GPU path, and its live bytes counted (a recipe on `fake_step`).

What runs is TRL's own code: the policy's forward over the concatenated chosen and rejected rows (2 x pairs), the
reference forward under `torch.no_grad()` (a frozen copy for full fine-tuning; the adapter-disabled policy under
peft), both through `add_fused_lm_head`'s chunked log-probabilities, then the sigmoid loss and the metrics. The
trainer object is a namespace holding only the attributes `_compute_loss` reads; TRL's own DPOTrainer.__init__
needs a dataset and a tokenizer, which the step's memory does not depend on.

On a GPU, TRL's fused head scores only the positions with a label (`hidden_states[mask]`) and folds each vocabulary
tile in a Triton kernel that works in place (trl/kernels/chunked_logprob.py `_use_triton`). Here the kernels are
no-ops, `_use_triton` answers True and the fp32 accumulation is in place (CUDA's `addmm(..., out_dtype=float32)`),
so the Python side allocates what it allocates on a GPU (the projection tile, the per-token fp32 statistics, the
gradients), not the CPU fallback's upcast copies and full-vocabulary temporaries. A boolean
mask selects the first `labelled` rows: the count of labelled positions, which the harness knows because it builds
the labels (fake tensors cannot evaluate a mask).

The rows are unpadded (every chosen and rejected row `seq_len` tokens): transformers' `_ignore_causal_mask_sdpa`
answers as it does on a GPU for an all-ones attention mask (no mask; SDPA's `is_causal`), which fake tensors cannot
evaluate. `cuda_paths.as_on_gpu` applies the other CUDA branches (dropout's bool mask, SDPA's kernel choice).
"""

from __future__ import annotations

import contextlib
import types
from collections import defaultdict
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
from vramplan.measure.hf_step import quiet_libraries, step_autocast, track_model
from vramplan.measure.livebytes import LiveBytesTracker
from vramplan.training import Method, TrainingSetup

# DPOConfig defaults (trl/trainer/dpo_config.py, TRL 1.16): beta 0.1, loss_type ["sigmoid"], f_divergence_type
# "reverse_kl".
DPO_BETA = 0.1
# The outputs DPOTrainer asks its fused head for (dpo_trainer.py __init__: add_fused_lm_head(..., outputs=...)).
DPO_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


class MetricValue:
    """What `accelerator.gather(...)` returns here: the metrics' reductions and `.item()` without a real tensor
    (a dtype and a device for the torch.tensor TRL's nanmin/nanmax build from it)."""

    dtype = torch.float32
    device = torch.device("cpu")

    def item(self) -> float:
        return 1.0

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self

    def __truediv__(self, other):
        return self

    def __getitem__(self, index):
        return self

    __add__ = __sub__ = __mul__ = __radd__ = __rtruediv__ = __rsub__ = __rmul__ = __truediv__

    def __float__(self) -> float:
        return 1.0

    def __int__(self) -> int:
        return 1

    def __floordiv__(self, other) -> int:
        return 1

    def __gt__(self, other) -> bool:
        return True

    __lt__ = __ge__ = __le__ = __gt__


class NoKernel:
    """A Triton kernel launch (`kernel[grid](...)`) that does nothing: the kernels write into buffers the Python side
    already allocated."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def unpadded_rows():
    """transformers' mask skip as a GPU takes it for an all-ones attention mask: no 4D mask, SDPA with is_causal."""
    from transformers import masking_utils

    original = masking_utils._ignore_causal_mask_sdpa
    masking_utils._ignore_causal_mask_sdpa = lambda *args, **kwargs: True
    try:
        yield
    finally:
        masking_utils._ignore_causal_mask_sdpa = original


class _LabelledRows(torch.overrides.TorchFunctionMode):
    """`tensor[bool_mask]` as the first `labelled` rows (the mask's count, which fake tensors cannot evaluate); a
    torch function mode, so Tensor itself is never patched."""

    def __init__(self, labelled: int):
        super().__init__()
        self.labelled = labelled

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and len(args) == 2:
            tensor, index = args
            if isinstance(index, torch.Tensor) and index.dtype == torch.bool \
                    and index.shape == tensor.shape[:index.dim()]:
                rows = tensor.reshape(-1, *tensor.shape[index.dim():])
                return func(rows, slice(0, self.labelled))
        return func(*args, **kwargs)


@contextlib.contextmanager
def gpu_fused_head(labelled: int):
    """TRL's fused head on its GPU path, `labelled` positions scored (see the module's docstring)."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    saved = (chunked_logprob._use_triton, trl_utils._use_triton, chunked_logprob._forward_kernel,
             chunked_logprob._backward_kernel, chunked_logprob._addmm_fp32)
    chunked_logprob._use_triton = trl_utils._use_triton = lambda device: True
    chunked_logprob._forward_kernel = chunked_logprob._backward_kernel = NoKernel()
    # On CUDA `_addmm_fp32` accumulates into its fp32 buffer in place (torch.addmm(..., out_dtype=float32, out=acc));
    # the CPU branch upcasts both operands first. The buffer exists already: nothing to allocate.
    chunked_logprob._addmm_fp32 = lambda acc, a, b: None
    try:
        with _LabelledRows(labelled):
            yield
    finally:
        (chunked_logprob._use_triton, trl_utils._use_triton, chunked_logprob._forward_kernel,
         chunked_logprob._backward_kernel, chunked_logprob._addmm_fp32) = saved


def policy_and_reference(config: dict[str, Any], setup: TrainingSetup, mode, outputs: tuple[str, ...],
                         with_reference: bool):
    """The fake policy with TRL's fused head asking for `outputs`, and, `with_reference`, the frozen reference copy
    TRL's trainers load for full fine-tuning (a second model in the policy's dtype, its head returning log_probs);
    the reference is None otherwise (peft disables the adapters instead)."""
    from trl.trainer.utils import add_fused_lm_head

    model = build_fake_model(config, setup, mode)
    add_fused_lm_head(model.get_base_model() if hasattr(model, "get_base_model") else model, outputs=outputs)
    if not with_reference:
        return model, None
    reference = build_fake_model(config, setup, mode)
    reference.requires_grad_(False)
    reference.eval()
    add_fused_lm_head(reference)
    return model, reference


def dpo_trainer_namespace(model, ref_model, beta: float = DPO_BETA, gradient_checkpointing: bool = False,
                          precompute_ref: bool = False):
    """The attributes DPOTrainer._compute_loss reads, at DPOConfig's defaults."""
    metric = MetricValue()
    accelerator = types.SimpleNamespace(unwrap_model=lambda module: module, device=torch.device("cpu"),
                                        gather_for_metrics=lambda value: metric, gather=lambda value: metric)
    args = types.SimpleNamespace(gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=None)
    return types.SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=accelerator, args=args, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=precompute_ref, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, rpo_alpha=None, _metrics={"train": defaultdict(list)},
        _total_train_tokens=0, _tp_size=1,
    )


def trace_dpo_step(config: dict[str, Any], setup: TrainingSetup, *, prompt_len: int | None = None,
                   beta: float = DPO_BETA, seed: int = 0) -> StepTrace:
    """Peak live bytes of a steady-state DPO step: `setup.batch_size` pairs of `setup.seq_len` tokens each (prompt
    `prompt_len` + completion; default the setup's, else 1), the reference model a frozen copy for full fine-tuning
    and the adapter-disabled policy under peft."""
    prompt_len = prompt_len if prompt_len is not None else setup.prompt_len or 1
    if not 0 < prompt_len < setup.seq_len:
        raise ValueError(f"prompt_len {prompt_len} must be within (0, {setup.seq_len})")
    with quiet_libraries():
        return _trace(config, setup, prompt_len, beta, seed)


def _trace(config: dict[str, Any], setup: TrainingSetup, prompt_len: int, beta: float, seed: int) -> StepTrace:
    from trl import DPOTrainer

    torch.manual_seed(seed)
    mode = fake_mode()
    # dpo_trainer.py __init__: a second model loaded in the policy's dtype (none with precompute_ref_log_probs)
    model, reference = policy_and_reference(config, setup, mode, DPO_HEAD_OUTPUTS,
                                            setup.method is Method.FULL and not setup.precompute_ref)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker()
    hooks = tag_gradients(params, tracker, owners)
    trainer = dpo_trainer_namespace(model, reference, beta, setup.gradient_checkpointing, setup.precompute_ref)
    autocast = step_autocast(setup)
    rows, length = 2 * setup.batch_size, setup.seq_len
    # labels are the completion tokens, shifted by one inside the fused head: (length - 1 - (prompt_len - 1)) each
    labelled = rows * (length - prompt_len)

    def forward(inputs):
        with autocast():
            return DPOTrainer._compute_loss(trainer, model, inputs, False)

    optimizer = make_optimizer(params, setup.optimizer)
    with removing(hooks), mode, as_on_gpu(), unpadded_rows(), gpu_fused_head(labelled), \
            attribute_modules(model, tracker), tracker:
        completion = torch.zeros(rows, length, dtype=torch.long)
        completion[:, prompt_len:] = 1
        inputs = {"input_ids": torch.randint(0, int(config["vocab_size"]), (rows, length)),
                  "attention_mask": torch.ones(rows, length, dtype=torch.long), "completion_mask": completion}
        if setup.precompute_ref:  # the dataset's precomputed columns, one fp32 per pair each
            inputs["ref_chosen_logps"] = torch.zeros(setup.batch_size)
            inputs["ref_rejected_logps"] = torch.zeros(setup.batch_size)
        track_model(model, tracker, owners)
        if reference is not None:
            track_model(reference, tracker, parameter_owners(reference))

        measure_optimizer_step(tracker, params, owners, optimizer, lambda: forward(inputs))
    return model_step_trace(tracker, model, params)
