"""TRL's GRPO step on one GPU with transformers generation (trl/trainer/grpo_trainer.py, TRL 1.16): the generation
phase (transformers `generate` with its KV cache, then the reference log-probs when beta > 0) ahead of a training
step composed from the Hugging Face step's terms (hf.py), TRL's fused head (components/trl_head.py) in place of the
logits.

Generation runs every steps_per_generation micro-steps over batch x steps_per_generation rows, after the optimizer
step has freed the gradients (zero_grad(set_to_none=True)): weights, adapters, optimizer states and a reference copy
are what it shares the GPU with. Its candidate peaks: the prefill's last layer (every layer's cache of the prompt,
that layer's no_grad transients), the last decoding step (the cache of prompt + completion - 1 tokens, one layer's
`torch.cat` growth, the fp32 next-token logits and their softmax), and with beta > 0 the reference scoring (no_grad
forwards of batch rows, TRL's fused head). Traced: vramplan/measure/trl_grpo.py.
"""

from __future__ import annotations

from vramplan.estimate.components.activations.flow import dtype_flow, hidden_state_bytes
from vramplan.estimate.components.activations.mlp import mlp_forward_transient_bytes
from vramplan.estimate.components.activations.norms import final_norm_forward_bytes
from vramplan.estimate.components.kv_cache import cache_growth_bytes, kv_cache_bytes
from vramplan.estimate.components.trl_head import GRPO_FP32_OUTPUTS, fused_head_memory, without_head_copy
from vramplan.estimate.compose.dpo import REFERENCE
from vramplan.estimate.compose.hf import backward_peak, estimate_with_step, forward_peak, step_parts
from vramplan.estimate.components.autocast import autocast_weight_copies
from vramplan.estimate.dtypes import BF16_WEIGHTS, FP32_BYTES, INT64_BYTES, tensor_bytes
from vramplan.estimate.strategies import rank_states
from vramplan.estimate.strategies.single import with_fused_head_gradient
from vramplan.models.catalog import ResolvedModel
from vramplan.models.spec import ModelSpec
from vramplan.result import Estimate, PhasePeak
from vramplan.training import Method, Precision, TrainingSetup

GENERATION_BATCH = "generation_batch"
KV_CACHE = "kv_cache"
# With vLLM, the generation batch also carries old_per_token_logps and sampling_per_token_logps (grpo_trainer.py
# _generate_and_score_completions: vllm_importance_sampling_correction True, GRPOConfig's default).
VLLM_SCORED_LOGPS = 2
# A decoder layer's residual-stream tensors alive inside its MLP in a no_grad forward (our trace,
# measure/trl_grpo.py): the embedding output (the model's `inputs_embeds`), the layer's input, the residual after
# attention, and the post-attention norm's output.
NO_GRAD_FRAME_TENSORS = 4
# The SwiGLU MLP at its elementwise product in a no_grad forward: act(gate), up and their product (our trace).
NO_GRAD_MLP_INTERMEDIATES = 3
# The next-token step of transformers' `_sample` (generation/utils.py): beside the lm_head's last-position logits
# (`logits_to_keep=1`), their fp32 copy `next_token_logits` (GRPOConfig's sampling defaults add no logits
# processor), the softmax `probs`, and torch.multinomial's exponential draw `q` (aten/src/ATen/native/
# Distributions.cpp multinomial, its one-sample path): rows x vocabulary fp32 each.
NEXT_TOKEN_FP32_TENSORS = 3


def generation_batch_bytes(setup: TrainingSetup) -> int:
    """What `_generate_and_score_completions` returns and `_prepare_inputs` buffers for the generation batch: prompt
    and completion ids and masks (int64), the advantages, with beta > 0 the reference log-probs, and with vLLM the
    old and sampling log-probs of its importance-sampling correction (fp32 per completion token)."""
    rows, length = setup.generation_rows, setup.seq_len
    per_token = tensor_bytes(rows * setup.completion_len * FP32_BYTES)
    scored = (1 if setup.grpo.beta > 0 else 0) + (VLLM_SCORED_LOGPS if _colocated(setup) else 0)
    return 2 * tensor_bytes(rows * length * INT64_BYTES) + tensor_bytes(rows * FP32_BYTES) + scored * per_token


def _colocated(setup: TrainingSetup) -> bool:
    """vLLM generates (colocated or as a server): the training side rescores for its importance sampling."""
    return setup.grpo.generation != "transformers"


def estimate_grpo(model: ResolvedModel, setup: TrainingSetup) -> Estimate:
    spec = model.spec
    rows = setup.model_copy(update={"objective": "sft", "prompt_len": None, "grpo": None})
    states = with_fused_head_gradient(rank_states(spec, rows))
    parts = step_parts(spec, rows, states)
    head = fused_head_memory(spec, rows, setup.labelled_tokens, fp32_outputs=GRPO_FP32_OUTPUTS, bool_outputs=0)
    # grpo_trainer.py __init__: beta > 0 without peft loads a reference model in the policy's dtype; under peft the
    # reference is the base model with the adapters disabled; beta 0 (GRPOConfig's default): none
    reference = states.weights if setup.method is Method.FULL and setup.grpo.beta > 0 else 0
    held = {**parts.persistent, REFERENCE: reference}
    persistent = {**held, GENERATION_BATCH: generation_batch_bytes(setup)}
    parts = parts.model_copy(update={"logits": head, "persistent": persistent,
                                   "copies": without_head_copy(spec, rows, parts.copies)})
    forward = forward_peak(spec, rows, parts)
    backward = backward_peak(spec, rows, parts)
    if not _colocated(setup):
        return estimate_with_step(model, setup, rows, parts, forward, backward,
                                  before=[generation_peak(spec, setup, held)])
    # vLLM generates in its own share of the GPU; on this side the importance-sampling correction scores the batch
    # with the policy (and the reference with beta > 0) under no_grad (grpo_trainer.py _generate_and_score_completions)
    scoring = [_scoring(spec, setup, held, policy=True)]
    if setup.grpo.beta > 0:
        scoring.append(_scoring(spec, setup, held, policy=False))
    estimate = estimate_with_step(model, setup, rows, parts, forward, backward,
                                  before=[max(scoring, key=lambda p: p.total_bytes)])
    from vramplan.estimate.compose.grpo_vllm import colocated_note, colocated_vllm, server_note

    engine = colocated_vllm(model, setup, estimate, held)
    if setup.grpo.generation == "vllm-server":
        return estimate.model_copy(update={"generation_server": engine,
                                           "strategy_notes": [*estimate.strategy_notes, server_note(engine)]})
    return estimate.model_copy(update={"colocated": engine,
                                       "strategy_notes": [*estimate.strategy_notes, colocated_note(engine)]})


def no_grad_layer_bytes(spec: ModelSpec, setup: TrainingSetup, tokens: int, adapters_run: bool) -> int:
    """What one decoder layer's MLP holds at its peak in a no_grad forward of `tokens` positions, the residual frame
    included. With a LoRA-adapted up_proj (peft lora.Linear.forward) the peak is its `result + lora_B(...) *
    scaling`: act(gate), the base output, the scaled fp32 adapter output and their fp32 sum, beside the input's fp32
    cast when the layer's dtype is not the adapter's. An MoE layer: its experts' forward transient."""
    if spec.is_moe_layer(spec.num_layers - 1):
        return hidden_state_bytes(spec, setup, tokens) + mlp_forward_transient_bytes(spec, setup, tokens)
    flow = dtype_flow(setup)
    frame = NO_GRAD_FRAME_TENSORS * hidden_state_bytes(spec, setup, tokens)
    inter = tokens * spec.intermediate_size
    adapted = {lin.name.rsplit(".", 1)[-1] for lin in spec.lora_linears(setup.lora.targets)} if (
        setup.lora and adapters_run) else set()
    if adapted & {"up_proj", "gate_up_proj"}:
        cast = tensor_bytes(tokens * spec.hidden_size * flow.adapter) if flow.linear_out != flow.adapter else 0
        return frame + 2 * tensor_bytes(inter * flow.linear_out) + 2 * tensor_bytes(inter * FP32_BYTES) + cast
    return frame + NO_GRAD_MLP_INTERMEDIATES * tensor_bytes(inter * flow.linear_out)


def generation_setup(setup: TrainingSetup, rows: int, seq_len: int) -> TrainingSetup:
    """The setup whose dtype flow `generate`'s forwards follow, at `rows` x `seq_len`, no_grad (a layer keeps nothing,
    as in a checkpointed layer's first forward). accelerate's prepare_model wraps the model's forward in autocast, and
    a plain model's generate calls it; a PeftModel's generate calls its base model's forward, outside autocast: the
    weights' own dtypes (bf16-pure's flow, or fp32's for fp32 weights)."""
    generating = setup.model_copy(update={"objective": "sft", "prompt_len": None, "grpo": None, "batch_size": rows,
                                          "seq_len": seq_len, "gradient_checkpointing": True})
    if setup.method is Method.FULL or not setup.autocast:
        return generating
    plain = Precision.BF16_PURE if setup.precision in BF16_WEIGHTS else Precision.FP32
    return generating.model_copy(update={"precision": plain})


def generation_peak(spec: ModelSpec, setup: TrainingSetup, held: dict[str, int]) -> PhasePeak:
    """The largest of the generation phase's moments (see the module's docstring)."""
    rows, prompt, length = setup.generation_rows, setup.prompt_len, setup.seq_len
    prefill = generation_setup(setup, rows, prompt)
    flow = dtype_flow(prefill)
    element = flow.linear_out  # k_proj/v_proj outputs, the cache's dtype (Linear4bit's: its input's dtype)
    # autocast's weight casts, cached per forward call for weights that require grad (aten autocast_mode.cpp
    # cached_cast): a full fine-tune's fp32 weights under mixed precision, every layer's by the last one
    copies = autocast_weight_copies(spec, prefill.model_copy(update={"gradient_checkpointing": False}))
    prompts = 2 * tensor_bytes(rows * prompt * INT64_BYTES)  # prompt ids and attention mask
    prefill_tokens = rows * prompt
    prefill_layer = PhasePeak(phase="generation", components={
        **held,
        GENERATION_BATCH: prompts,
        KV_CACHE: kv_cache_bytes(spec, rows, prompt, prompt, element),
        "activations": no_grad_layer_bytes(spec, prefill, prefill_tokens, adapters_run=True),
        "autocast_weight_copies": spec.num_layers * copies.layer_bytes,
    })
    # the lm_head's output dtype: the autocast dtype, or its weight's (an fp32 head under QLoRA's k-bit preparation)
    logits = flow.compute if flow.autocast and setup.method is Method.FULL else flow.residual
    last_step = PhasePeak(phase="generation", components={
        **held,
        # the prompts, and the growing ids (torch.cat: the new row of ids beside the old)
        GENERATION_BATCH: prompts + 2 * tensor_bytes(rows * length * INT64_BYTES),
        KV_CACHE: kv_cache_bytes(spec, rows, length - 1, prompt, element)
        + cache_growth_bytes(spec, rows, length - 2, element),
        "activations": tensor_bytes(rows * spec.vocab_size * logits)
        + NEXT_TOKEN_FP32_TENSORS * tensor_bytes(rows * spec.vocab_size * FP32_BYTES),
        "autocast_weight_copies": copies.forward_bytes,
    })
    points = [prefill_layer, last_step]
    if setup.grpo.beta > 0:
        points.append(_scoring(spec, setup, held, policy=False))
    return max(points, key=lambda p: p.total_bytes)


def _scoring(spec: ModelSpec, setup: TrainingSetup, held: dict[str, int], policy: bool) -> PhasePeak:
    """`_get_per_token_logps_and_entropies` under no_grad, per_device_train_batch_size rows at a time, with the
    reference (`policy` False) or the policy (vLLM's importance-sampling correction): its head's forward over the
    completion positions, beside the generation batch."""
    chunk = setup.model_copy(update={"objective": "sft", "prompt_len": None, "grpo": None,
                                     "gradient_checkpointing": True})
    tokens = chunk.tokens_per_step
    # full fine-tuning scores with the reference copy, whose head computes log_probs alone; peft with the policy's
    outputs = 1 if setup.method is Method.FULL and not policy else GRPO_FP32_OUTPUTS
    head = fused_head_memory(spec, chunk, setup.labelled_tokens, fp32_outputs=outputs, bool_outputs=0)
    batch = generation_batch_bytes(setup) + 3 * tensor_bytes(tokens * INT64_BYTES)  # + the chunk's ids, mask, labels
    head_point = PhasePeak(phase="generation", components={
        **held,
        GENERATION_BATCH: batch,
        "activations": hidden_state_bytes(spec, chunk, tokens) + final_norm_forward_bytes(spec, chunk),
        "logits_loss": head.forward_peak_bytes,
    })
    layer_point = PhasePeak(phase="generation", components={
        **held,
        GENERATION_BATCH: batch,
        # the frozen copy, or the policy with its adapters disabled: no adapter runs; the policy runs its own
        "activations": no_grad_layer_bytes(spec, chunk, tokens, adapters_run=policy),
    })
    return max([head_point, layer_point], key=lambda p: p.total_bytes)
