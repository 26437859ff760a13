"""Launcher configs for a modelled setup: DeepSpeed JSON, accelerate YAML, HF Trainer FSDP arguments."""
