"""`--stack`: each framework's defaults fill what the user leaves out, with sources; flags win; switches a stack does
not offer are refused."""

from __future__ import annotations

import pytest

from vramplan.errors import UsageError
from vramplan.presets import PRESETS
from vramplan.training import Attention, Loss, Optimizer, Stack, resolve_setup


def test_every_stack_has_a_preset_with_sources():
    assert set(PRESETS) == set(Stack)
    assert all(preset.sources for preset in PRESETS.values())


@pytest.mark.parametrize("stack", list(Stack))
def test_unset_options_come_from_the_stack(stack):
    preset = PRESETS[stack]
    setup = resolve_setup("lora", stack=stack.value)
    assert setup.stack is stack and setup.optimizer is preset.optimizer and setup.loss is preset.loss
    assert setup.lora.rank == preset.lora_rank and setup.lora.dropout == preset.lora_dropout
    assert setup.gradient_checkpointing is preset.checkpointing_adapters
    assert resolve_setup("full", stack=stack.value).gradient_checkpointing is preset.checkpointing_full


def test_flags_override_the_preset():
    setup = resolve_setup("lora", stack="llama-factory", lora_rank=64, optimizer="adamw", gradient_checkpointing=False)
    assert (setup.lora.rank, setup.optimizer, setup.gradient_checkpointing) == (64, Optimizer.ADAMW, False)


def test_llama_factory_checkpoints_full_fine_tuning_and_hf_does_not():
    assert resolve_setup("full", stack="llama-factory").gradient_checkpointing
    assert not resolve_setup("full").gradient_checkpointing


@pytest.mark.parametrize(
    "stack, switches, match",
    [
        ("torchtune", dict(liger=True), "--liger is not offered by --stack torchtune"),
        ("hf", dict(loss="chunked"), "--loss chunked is not offered by --stack hf"),
        ("hf", dict(optimizer_in_backward=True), "exists in torchtune"),
        ("llama-factory", dict(activation_offload=True), "axolotl, torchtune"),
        ("torchtune", dict(loss="fused"), "--loss fused is not offered"),
        ("hf", dict(attn="xformers"), "unknown --attn"),
    ],
)
def test_switches_a_stack_does_not_offer_are_refused(stack, switches, match):
    with pytest.raises(UsageError, match=match):
        resolve_setup("lora", stack=stack, **switches)


def test_torchtune_runs_fsdp_only_and_optimizer_in_backward_on_one_gpu():
    with pytest.raises(UsageError, match="FSDP2"):
        resolve_setup("full", stack="torchtune", gpus=8, strategy="zero3")
    with pytest.raises(UsageError, match="single-device"):
        resolve_setup("full", stack="torchtune", gpus=8, strategy="fsdp", optimizer_in_backward=True)
    setup = resolve_setup("full", stack="torchtune", attn="sdpa", packing=True)
    assert setup.attn is Attention.SDPA and setup.packing and setup.loss is Loss.CHUNKED
