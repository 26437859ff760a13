"""TRL's GRPO step (trl/trainer/grpo_trainer.py, TRL 1.16) run on CPU under fake tensors, generation included, with
its live bytes counted (a recipe on `fake_step`, beside trl_dpo.py).

What runs, in the order GRPOTrainer runs it on one GPU with `use_vllm=False`:
- generation: transformers' own `model.generate` (GenerationConfig as GRPOTrainer.__init__ builds it: sampling,
  max_new_tokens = max_completion_length, TRL's top_k 0 / top_p 1.0 / temperature 1.0) over the generation batch,
  batch x steps_per_generation prompts, with checkpointing off and the KV cache on (TRL's
  unwrap_model_for_generation), every completion run to max_completion_length (the longest, the upper end);
- scoring: with beta > 0 the reference log-probs, `GRPOTrainer._get_per_token_logps_and_entropies` under no_grad in
  chunks of per_device_train_batch_size rows (the frozen copy for full fine-tuning; the adapter-disabled policy
  under peft); the generation batch shuffled and split into steps_per_generation micro-batches by TRL's own
  `shuffle_sequence_dict` / `split_tensor_dict`;
- the training step: `GRPOTrainer._compute_loss` on the first micro-batch (GRPOConfig's loss "dapo", token-level
  importance sampling), through TRL's fused LM head on its GPU path, then backward and the optimizer step.

The trainer is a namespace holding what those methods read. Fake tensors cannot answer data-dependent questions,
so `generate` is told the answers a GPU gives for unpadded prompts (`_NoPaddingAnswers`: no right padding, an
all-ones attention mask, no negative token ids) and runs to its length (`fixed_length`: StopCheck says stop at
prompt + max_completion_length, as when no row samples EOS). TRL's reward functions and the tokenizer (host-side
work) do not run.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections import defaultdict
from typing import Any

import torch

from vramplan.measure.build import make_optimizer
from vramplan.measure.cuda_paths import as_on_gpu
from vramplan.measure.fake_step import (
    StepTrace,
    attribute_modules,
    create_optimizer_states,
    fake_mode,
    model_step_trace,
    parameter_owners,
    removing,
    run_phases,
    tag_gradients,
    tag_optimizer_states,
)
from vramplan.measure.hf_step import quiet_libraries, step_autocast, track_model
from vramplan.measure.livebytes import LiveBytesTracker
from vramplan.measure.trl_dpo import MetricValue, gpu_fused_head, policy_and_reference, unpadded_rows
from vramplan.training import Method, TrainingSetup

# The outputs GRPOTrainer asks its fused head for (grpo_trainer.py __init__: add_fused_lm_head(..., outputs=...)).
GRPO_HEAD_OUTPUTS = ("log_probs", "entropy")
# GRPOConfig defaults (trl/trainer/grpo_config.py, TRL 1.16): loss_type "dapo", epsilon 0.2 (epsilon_high = epsilon
# when unset), importance_sampling_level "token", top_entropy_quantile 1.0, temperature 1.0, top_p 1.0, top_k 0.
GRPO_EPSILON = 0.2
GENERATION_PHASE = "generation"


class _Answer:
    """A data-dependent reduction's answer (`.item()`, `bool()`), decided without the data."""

    def __init__(self, value: bool):
        self.value = value

    def item(self) -> bool:
        return self.value

    def __bool__(self) -> bool:
        return self.value


class _NoPaddingAnswers(torch.overrides.TorchFunctionMode):
    """Whole-tensor `any()` answers False and `all()` True: what `generate`'s checks find on a GPU for unpadded
    prompts (no right padding, an all-ones attention mask, no negative EOS id, no pad among the EOS ids)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.any, torch.Tensor.any) and len(args) == 1 and not kwargs:
            return _Answer(False)
        if func in (torch.all, torch.Tensor.all) and len(args) == 1 and not kwargs:
            return _Answer(True)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fixed_length(total_len: int):
    """`generate` stops when its rows are `total_len` tokens long (StopCheck reads the unfinished flags' max on the
    host, which fake tensors cannot)."""
    from transformers.generation import utils as generation_utils

    original = generation_utils.StopCheck.__call__
    generation_utils.StopCheck.__call__ = lambda self, unfinished, tokens, length: length >= total_len
    try:
        yield
    finally:
        generation_utils.StopCheck.__call__ = original


def generation_config(completion_len: int, vocab_size: int):
    """GRPOTrainer.__init__'s GenerationConfig at GRPOConfig's defaults (ids inside the vocabulary)."""
    from transformers import GenerationConfig

    return GenerationConfig(max_new_tokens=completion_len, do_sample=True, pad_token_id=0, bos_token_id=1,
                            eos_token_id=[min(2, vocab_size - 1)], temperature=1.0, top_p=1.0, top_k=0, min_p=None,
                            repetition_penalty=1.0, cache_implementation=None, disable_compile=True)


def grpo_trainer_namespace(model, ref_model, setup: TrainingSetup, autocast):
    """The attributes GRPOTrainer._compute_loss and _get_per_token_logps_and_entropies read, at GRPOConfig's
    defaults."""
    from trl import GRPOTrainer

    metric = MetricValue()
    accelerator = types.SimpleNamespace(
        unwrap_model=lambda module: module, device=torch.device("cpu"), num_processes=1, sync_gradients=True,
        is_main_process=True,
        autocast=lambda: autocast(), gather_for_metrics=lambda value: metric, gather=lambda value: metric,
        reduce=lambda value, reduction="sum": metric)
    args = types.SimpleNamespace(delta=None, use_bias_correction_kl=True, gradient_checkpointing_kwargs=None,
                                 steps_per_generation=setup.grpo.steps_per_generation,
                                 per_device_train_batch_size=setup.batch_size)
    trainer = types.SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=accelerator, args=args, beta=setup.grpo.beta,
        loss_type="dapo", importance_sampling_level="token", epsilon_low=GRPO_EPSILON, epsilon_high=GRPO_EPSILON,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=True, aux_loss_enabled=False, _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=setup.grpo.steps_per_generation,
        max_completion_length=setup.completion_len, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    trainer._get_per_token_logps_and_entropies = functools.partial(
        GRPOTrainer._get_per_token_logps_and_entropies, trainer)
    return trainer


def trace_grpo_step(config: dict[str, Any], setup: TrainingSetup, seed: int = 0) -> StepTrace:
    """Peak live bytes of a steady-state GRPO step with transformers generation: the generation batch
    (`setup.generation_rows` prompts of `setup.prompt_len` tokens, `setup.completion_len` generated each), its
    scoring, and one training micro-batch of `setup.batch_size` rows."""
    if setup.objective != "grpo" or setup.grpo is None:
        raise ValueError("trace_grpo_step needs a setup with objective grpo")
    with quiet_libraries():
        return _trace(config, setup, seed)


def _trace(config: dict[str, Any], setup: TrainingSetup, seed: int) -> StepTrace:
    from trl import GRPOTrainer
    from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

    torch.manual_seed(seed)
    mode = fake_mode()
    # grpo_trainer.py __init__: beta > 0 without peft loads a second model in the policy's dtype; the heads' temperature
    # is GRPOConfig's 1.0, add_fused_lm_head's default
    model, reference = policy_and_reference(config, setup, mode, GRPO_HEAD_OUTPUTS,
                                            setup.method is Method.FULL and setup.grpo.beta > 0)
    params = [p for p in model.parameters() if p.requires_grad]
    owners = parameter_owners(model)
    tracker = LiveBytesTracker()
    hooks = tag_gradients(params, tracker, owners)
    autocast = step_autocast(setup)
    trainer = grpo_trainer_namespace(model, reference, setup, autocast)
    rows, prompt, completion = setup.generation_rows, setup.prompt_len, setup.completion_len
    length = prompt + completion
    optimizer = make_optimizer(params, setup.optimizer)
    vocab = int(config["vocab_size"])
    with removing(hooks), mode, as_on_gpu(), unpadded_rows(), attribute_modules(model, tracker), tracker:
        track_model(model, tracker, owners)
        if reference is not None:
            track_model(reference, tracker, parameter_owners(reference))
        tracker.set_phase("warmup")
        create_optimizer_states(params, [optimizer])
        tag_optimizer_states(optimizer, tracker, owners)
        tracker.set_phase("idle")
        tracker.reset_peak()

        tracker.set_phase(GENERATION_PHASE)
        batch = _generate(model, setup, rows, prompt, completion, vocab, autocast)
        if setup.grpo.beta > 0:
            with torch.no_grad(), _reference_of(model, reference) as scorer:
                with gpu_fused_head(setup.batch_size * completion):
                    batch["ref_per_token_logps"], _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                        trainer, scorer, torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1),
                        torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1), completion,
                        batch_size=setup.batch_size)
        batch["advantages"] = torch.zeros(rows)
        batch["num_items_in_batch"] = torch.tensor(float(rows * completion))
        # _generate_and_score_completions' output, buffered as _prepare_inputs buffers it
        buffered = split_tensor_dict(shuffle_sequence_dict(batch), setup.grpo.steps_per_generation)
        del batch
        tracker.set_phase("idle")

        def forward():
            with autocast():
                return GRPOTrainer._compute_loss(trainer, model, buffered[0])

        with gpu_fused_head(setup.batch_size * completion):
            run_phases(tracker, forward, optimizer)
        tracker.finish()
    assert length == setup.seq_len
    return model_step_trace(tracker, model, params)


@contextlib.contextmanager
def _reference_of(model, reference):
    """What scores the reference log-probs: the frozen copy, or under peft the policy with its adapters disabled
    (grpo_trainer.py _generate_and_score_completions: use_adapter(model, None))."""
    if reference is not None:
        yield reference
    else:
        with model.disable_adapter():
            yield model


@contextlib.contextmanager
def _autocast_per_forward(model, autocast):
    """accelerate's mixed-precision forward (accelerator.py prepare_model: `model.forward = autocast(model.forward)`):
    each forward call its own autocast region, whose weight-cast cache empties when the call returns."""
    if autocast is None:
        yield
        return
    original = model.forward

    @functools.wraps(original)  # generate reads the forward's signature (logits_to_keep)
    def forward(*args, **kwargs):
        with autocast():
            return original(*args, **kwargs)

    model.forward = forward
    try:
        yield
    finally:
        model.forward = original


def _generate(model, setup: TrainingSetup, rows: int, prompt: int, completion: int, vocab: int, autocast) -> dict:
    """transformers' generate as GRPOTrainer._generate_single_turn calls it, then the tensors TRL keeps: the prompt
    and completion ids and masks, re-padded from Python lists."""
    from trl.models.utils import disable_gradient_checkpointing

    prompt_ids = torch.randint(0, vocab, (rows, prompt))
    prompt_mask = torch.ones(rows, prompt, dtype=torch.long)
    # accelerate's prepare_model wraps the model's own forward in autocast (mixed precision); generate calls that
    # forward for a plain model, but a PeftModel's generate calls its base model's, which is not wrapped
    wrapped = setup.method is Method.FULL
    with disable_gradient_checkpointing(model, None), torch.no_grad(), _NoPaddingAnswers(), \
            fixed_length(prompt + completion), _autocast_per_forward(model, autocast if wrapped else None):
        output = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                generation_config=generation_config(completion, vocab))
    # completion ids go to Python lists and come back padded (grpo_trainer.py _generate_and_score_completions)
    completion_ids = torch.empty(rows, completion, dtype=torch.long)
    del output
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": torch.ones(rows, completion, dtype=torch.long)}
