"""The vendors' rule of thumb (16 / 2 / 0.5 GB of GPU memory per billion parameters for full / LoRA / QLoRA),
reproduced next to vramplan's estimate for the same model and method, with the terms that make the difference.

The rule counts model state only: 16 bytes per parameter is bf16 weights and gradients plus fp32 master weights
and two fp32 AdamW moments (Rajbhandari et al. 2020, ZeRO, section 3.1: 2 + 2 + 12 bytes). A run in pure bf16
(weights, gradients and moments in bf16, as transformers v5 loads them) holds half of it; a run also holds
activations, the logits and loss, QLoRA's k-bit preparation (non-4-bit weights upcast to fp32), allocator reserve
and the CUDA context, which the rule leaves out.
"""

from __future__ import annotations

from pydantic import BaseModel

from vramplan.hardware.catalog import HardwareCatalog

# GB (10^9 bytes) per billion parameters, by method: the GPU-workstation vendors' sizing rule of thumb.
RULE_GB_PER_BILLION = {"full": 16.0, "lora": 2.0, "qlora": 0.5}
GB = 10**9
# The rows: a 7B, a 32B and a 70B, each method; full fine-tuning in pure bf16 and with fp32 master weights.
RULE_MODELS = ("mistral-7b", "qwen2.5-32b", "llama-3.1-70b")
RULE_RUNS = (("full", "bf16"), ("full", "bf16-mixed"), ("lora", "bf16"), ("qlora", "bf16"))
RULE_BATCH, RULE_SEQ_LEN = 1, 2048
STATE_COMPONENTS = ("weights", "lora_adapters", "gradients", "optimizer_states")


class RuleRow(BaseModel):
    model: str
    method: str
    precision: str
    params: int
    rule_bytes: int  # the rule's figure for this model
    state_bytes: int  # vramplan's model state (weights, adapters, gradients, optimizer states) in the optimizer step
    vramplan_bytes: int  # vramplan's per-GPU need (device: peak + allocator reserve + CUDA context)
    terms: dict[str, int]  # what vramplan adds beyond the model state, by name
    smallest_gpu: str | None

    @property
    def difference_bytes(self) -> int:
        return self.vramplan_bytes - self.rule_bytes


def _terms(estimate, kbit_prep_bytes: int) -> dict[str, int]:
    """The largest bytes each non-state term reaches in any phase, plus runtime and k-bit prep."""
    terms: dict[str, int] = {}
    for phase in estimate.phases:
        for name, value in phase.components.items():
            if name not in STATE_COMPONENTS and value:
                terms[name] = max(terms.get(name, 0), value)
    terms["allocator reserve + CUDA context"] = estimate.device_bytes - estimate.peak_allocated_bytes
    if kbit_prep_bytes:
        terms["k-bit prep (non-4-bit weights to fp32)"] = kbit_prep_bytes
    return terms


def rule_rows(catalog: HardwareCatalog, headroom: float, allow_rocm: bool = False) -> list[RuleRow]:
    """The rule next to vramplan for RULE_MODELS x RULE_RUNS; the smallest single GPU is a CUDA part unless
    `allow_rocm`."""
    from vramplan.api import estimate

    gpus = sorted((gpu for gpu in catalog.gpus.values() if allow_rocm or gpu.software != "rocm"),
                  key=lambda gpu: gpu.memory_bytes)
    rows = []
    for model in RULE_MODELS:
        for method, precision in RULE_RUNS:
            result = estimate(model, method, batch_size=RULE_BATCH, seq_len=RULE_SEQ_LEN, precision=precision)
            step = next(phase for phase in result.phases if phase.phase == "optimizer")
            state = sum(step.components.get(name, 0) for name in STATE_COMPONENTS)
            kbit = 0
            if method == "qlora":
                plain = estimate(model, method, batch_size=RULE_BATCH, seq_len=RULE_SEQ_LEN, precision=precision,
                                 kbit_prep=False)
                kbit = result.device_bytes - plain.device_bytes
            needed = result.device_bytes
            smallest = next((gpu.id for gpu in gpus if gpu.memory_bytes * (1 - headroom) >= needed), None)
            rows.append(RuleRow(model=model, method=method, precision=precision, params=result.total_params,
                                rule_bytes=round(RULE_GB_PER_BILLION[method] * result.total_params),
                                state_bytes=state, vramplan_bytes=needed, terms=_terms(result, kbit),
                                smallest_gpu=smallest))
    return rows
