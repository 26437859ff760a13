"""The page's form, from RunOptions itself (vramplan/options.py): each field's name, flag, help, kind, choices and
the default its help states, so the page shows the CLI's options and defaults without a copy of either."""

from __future__ import annotations

import re
import typing

from pydantic import BaseModel

# Where each option sits on the page; a field not listed is "advanced".
GROUPS = {
    "run": ("objective", "batch_size", "seq_len", "precision", "optimizer", "gradient_checkpointing"),
    "objective": ("prompt_len", "completion_len", "num_generations", "steps_per_generation", "beta", "generation",
                  "vllm_gpu_memory_utilization", "vllm_sleep", "vllm_max_model_len", "precompute_ref"),
    "lora": ("lora_rank", "lora_targets", "lora_dropout", "double_quant", "kbit_prep"),
    "layout": ("gpus", "nodes", "strategy", "offload", "fsdp1_sharding", "backward_prefetch", "forward_prefetch"),
}
_DEFAULT = re.compile(r"\[default: (.*)\]\s*$")


class OptionField(BaseModel):
    name: str
    flag: str
    help: str
    kind: str  # int | float | bool | str
    choices: list[str] | None
    default: str | None  # the text of the help's "[default: ...]"
    layout: bool
    group: str


class FormOptions(BaseModel):
    methods: list[str]
    fields: list[OptionField]


def form_options() -> FormOptions:
    from vramplan.choices import Method
    from vramplan.options import RunOptions

    choices = _choices()
    fields = []
    for name, field in RunOptions.model_fields.items():
        extra = field.json_schema_extra
        kind = typing.get_args(field.annotation)[0]
        kind_name = "bool" if "switch" in extra else kind.__name__ if kind in (int, float) else "str"
        found = _DEFAULT.search(field.description or "")
        fields.append(OptionField(
            name=name, flag=extra.get("flag") or "--" + name.replace("_", "-"), help=field.description or "",
            kind=kind_name, choices=choices.get(name), default=found.group(1) if found else None,
            layout=extra["layout"], group=next((g for g, names in GROUPS.items() if name in names), "advanced")))
    return FormOptions(methods=[m.value for m in Method], fields=fields)


def _choices() -> dict[str, list[str]]:
    """Each option that takes one of a set: its values, from the enums and Literals the run is resolved with."""
    from vramplan.choices import OPTION_CHOICES
    from vramplan.training import GRPO_GENERATION, TrainingSetup

    def literal(name: str) -> list[str]:
        return [str(v) for v in typing.get_args(TrainingSetup.model_fields[name].annotation)]

    found = {name: [member.value for member in enum] for name, enum in OPTION_CHOICES.items()}
    found.update(objective=literal("objective"), transformers=literal("transformers"),
                 fsdp1_sharding=literal("fsdp1_sharding"), backward_prefetch=literal("backward_prefetch"),
                 generation=list(GRPO_GENERATION))
    return found


def run_flags(request) -> list[str]:
    """The command line of a page's run: --model (a pasted config's temporary path, which the answer then names
    as the user's file), --method and its options (spelled as a suggestion's: hardware/suggest.py option_flags)."""
    from vramplan.hardware.suggest import option_flags

    return ["--model", request.model, "--method", request.method, *option_flags(request.options.given())]
