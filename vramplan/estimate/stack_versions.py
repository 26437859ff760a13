"""Which library versions an answer models, and an installed stack whose memory layout differs from them.

The rules are traced on TESTED_VERSIONS (vramplan/versions.py). One difference by version changes memory a lot and
is detected from the installed packages' metadata (no import): transformers 4.x builds a mixture-of-experts layer's
experts as one nn.Linear each, which bitsandbytes quantizes to 4 bits and LoRA's all-linear adapts, where
transformers 5 (modelled) keeps them as grouped 3-D parameters that stay 16-bit under QLoRA.
"""

from __future__ import annotations

from vramplan.models.spec import ModelSpec
from vramplan.training import Method, Stack, TrainingSetup
from vramplan.versions import TESTED_VERSIONS, installed_version

HF_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
TORCHTUNE_LIBRARIES = ("torch", "torchtune", "torchao")
# transformers/models/mixtral/modeling_mixtral.py: v4's MixtralSparseMoeBlock holds nn.ModuleList of experts with
# nn.Linear w1/w2/w3; v5 (MixtralExperts) holds gate_up_proj / down_proj as 3-D nn.Parameters.
FIRST_GROUPED_EXPERTS_MAJOR = 5


def modelled_versions_line(setup: TrainingSetup) -> str:
    libraries = TORCHTUNE_LIBRARIES if setup.stack is Stack.TORCHTUNE else HF_LIBRARIES
    if setup.objective != "sft":  # DPO and GRPO run TRL's trainers
        libraries = (*libraries, "trl")
    line = "libraries modelled (traced): " + ", ".join(f"{name} {TESTED_VERSIONS[name]}" for name in libraries)
    if setup.transformers == 4:
        line += ("; --transformers 4: only the MoE block in 4.x's layout (router and experts nn.Linear, 4-bit under "
                 "QLoRA, balanced routing), rebuilt by vramplan/measure/moe_v4.py; the loss, attention and "
                 "bitsandbytes are the versions above (early 4.x's extra fp32 logits copy is not counted)")
    return line


def installed_layout_mismatch(spec: ModelSpec, setup: TrainingSetup) -> str | None:
    """Why the installed transformers would build this MoE model differently from the one modelled; None if not."""
    if spec.moe is None or setup.stack is Stack.TORCHTUNE:
        return None
    installed = installed_version("transformers")
    if installed is None or not installed.split(".")[0].isdigit():
        return None
    if int(installed.split(".")[0]) >= FIRST_GROUPED_EXPERTS_MAJOR or setup.transformers < FIRST_GROUPED_EXPERTS_MAJOR:
        return None
    effect = ("bitsandbytes quantizes them to 4 bits" if setup.method is Method.QLORA
              else "LoRA all-linear adapts each of them" if setup.method is Method.LORA else "their states differ")
    return (f"installed transformers {installed} builds this model's experts as one nn.Linear each ({effect}); "
            "vramplan models transformers 5's grouped 3-D experts unless --transformers 4 (Mixtral)")
