"""Activations: what autograd keeps (or Python keeps alive) for backward, tensor by tensor, per decoder layer and
per switch, for the whole micro-batch.

flow.py the dtypes along the residual stream; norms.py RMSNorm, final norm, Gemma's fp32 norm backward;
adapters.py peft LoRA's copies; attention.py SDPA, masks, eager attention, DeepSeek MLA; mlp.py SwiGLU MLP saved
tensors, forward/recompute transients and its backward step; moe.py router and grouped_mm experts; layer.py a whole
Hugging Face decoder layer and the forward's total; liger.py Liger's kernels; torchtune.py torchtune's layer.
Read from the transformers/peft/torchtune forward code and confirmed by tests/measure/test_trace_crosscheck.py.
"""
