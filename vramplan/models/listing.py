"""The catalog as `vramplan models` lists it: one row per model, with whether `estimate` answers for it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ModelRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    hf_repo: str
    size_alias: str | None
    family: str
    total_params: int
    estimable: bool  # False: `estimate` refuses it (an attention path or layout that is not modelled yet)
    refusal: str | None  # why, when it is refused


def model_rows() -> list[ModelRow]:
    """Every catalog model, with the refusal `estimate` gives for its default LoRA run, if any."""
    from vramplan.errors import NotModelledError
    from vramplan.estimate import refuse_unmodelled
    from vramplan.estimate.lora_targets import default_lora_targets
    from vramplan.models.catalog import load_catalog
    from vramplan.training import resolve_setup

    rows = []
    for record in load_catalog().values():
        try:  # the LoRA run `vramplan estimate --model ID` answers (MoE models: attention targets, as resolve_run)
            setup = resolve_setup("lora", lora_targets=default_lora_targets(record.spec))
            refuse_unmodelled(record.spec, setup)
            refusal = None
        except NotModelledError as err:
            refusal = str(err)
        rows.append(ModelRow(id=record.id, name=record.name, hf_repo=record.hf_repo, size_alias=record.size_alias,
                             family=record.spec.family, total_params=record.spec.total_params,
                             estimable=refusal is None, refusal=refusal))
    return rows
