"""A Hugging Face `TrainerCallback` that runs vramplan's pre-flight before training and records the real peak.

    trainer = Trainer(..., callbacks=[PreflightCallback("meta-llama/Llama-3.1-8B", "qlora", batch_size=4)])

At `on_train_begin` it checks the job's per-GPU need against what is free on this rank's GPU (LOCAL_RANK under
torchrun) and raises `PreflightFailed`, carrying the verdict, when it will not fit. After `record_after_steps`
optimizer steps it records `torch.cuda.max_memory_allocated`/`max_memory_reserved` next to the estimate.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from vramplan.errors import CannotCheckError, EXIT_DOES_NOT_FIT, VramplanError
from vramplan.units import DEFAULT_HEADROOM

logger = logging.getLogger("vramplan")


class PreflightFailed(VramplanError):
    """The job will not fit; `verdict` says by how much and what would help."""

    exit_code = EXIT_DOES_NOT_FIT

    def __init__(self, verdict):
        worst = min(verdict.gpus, key=lambda gpu: gpu.margin_bytes)
        super().__init__(
            f"vramplan pre-flight: {verdict.estimate.model.name} needs {verdict.estimate.device_bytes / 2**30:.2f} GiB "
            f"per GPU; GPU {worst.index} ({worst.name}) is short by {-worst.margin_bytes / 2**30:.2f} GiB"
        )
        self.verdict = verdict


class PreflightCallback(TrainerCallback):
    def __init__(self, model: str, method: str = "lora", *, headroom: float = DEFAULT_HEADROOM,
                 record_after_steps: int = 3, strict: bool = False, nvml=None, **options):
        from vramplan.api import estimate
        from vramplan.request import RunRequest

        self.estimate = estimate(model, method, **options)
        self.request = RunRequest.of(model, method, **options)
        self.headroom = headroom
        self.record_after_steps = record_after_steps
        self.strict = strict  # raise when the check cannot run (no GPU/driver) instead of logging it
        self.nvml = nvml
        self.verdict = None
        self.measured: dict[str, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        from vramplan.check.preflight import check_local

        try:
            self.verdict = check_local(self.estimate, headroom=self.headroom, nvml=self.nvml,
                                       request=self.request)
        except CannotCheckError as err:
            if self.strict:
                raise
            logger.warning("vramplan pre-flight skipped: %s", err)
            return control
        if not self.verdict.fits:
            raise PreflightFailed(self.verdict)
        logger.info("vramplan pre-flight: fits with %.2f GiB to spare",
                    min(gpu.margin_bytes for gpu in self.verdict.gpus) / 2**30)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        if state.global_step != self.record_after_steps or not torch.cuda.is_available():
            return control
        self.measured = {
            "max_memory_allocated": torch.cuda.max_memory_allocated(),
            "max_memory_reserved": torch.cuda.max_memory_reserved(),
            "estimate_peak_allocated_bytes": self.estimate.peak_allocated_bytes,
            "estimate_peak_reserved_bytes": self.estimate.peak_reserved_bytes,
        }
        logger.info("vramplan: measured peak %.2f GiB allocated against %.2f GiB estimated",
                    self.measured["max_memory_allocated"] / 2**30, self.estimate.peak_allocated_bytes / 2**30)
        return control
