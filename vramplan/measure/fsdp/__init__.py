"""One rank's live bytes in FSDP2 training, traced on CPU with a fake process group of N ranks.

The model is built as `build.build_fake_model` builds it (meta device, peft, FakeTensors; QLoRA with bitsandbytes'
`bnb_4bit_quant_storage=bfloat16`, the FSDP-QLoRA recipe) and sharded by accelerate's own `fsdp2_prepare_model`
(what transformers' Trainer runs for `fsdp_version: 2`): `fully_shard` on every decoder layer
(TRANSFORMER_BASED_WRAP on `model._no_split_modules`), the input embedding, a tail unit [final norm, lm_head] kept
unsharded after forward, then the root; trainable parameters upcast to fp32 when mixed precision is on, and
`MixedPrecisionPolicy(param_dtype, reduce_dtype, output_dtype)` set to the Trainer's bf16/fp16. The rank then runs
forward, backward and optimizer step under `torch.distributed` backend "fake" (collectives return at once), while
`FsdpLiveBytesTracker` counts live storages, FSDP's `untyped_storage().resize_` included, and files each one under
what FSDP made it: sharded parameter, all-gathered (unsharded) parameter, all-gather buffer, unsharded or sharded
gradient, reduce-scatter buffer. `trace_fsdp_step` runs each world size in a fresh Python process, since
`init_process_group` is process-global.

  shard.py    accelerate's sharding of the model, and the units it made
  tracker.py  the tracker and the patches that file FSDP's allocations
  step.py     the step, in this process or a fresh one (`python -m vramplan.measure.fsdp`)
"""

from vramplan.measure.fsdp.step import FsdpStepTrace, trace_fsdp_step, trace_fsdp_step_in_process

__all__ = ["FsdpStepTrace", "trace_fsdp_step", "trace_fsdp_step_in_process"]
