"""Real steps of TRL 1.16's own DPOTrainer, KTOTrainer and GRPOTrainer on the local GPU (or the CPU), with their peaks.

The model is built as a TRL user hands it over: random weights from the config in the load dtype (4-bit through
transformers' quantizer and peft's k-bit preparation for QLoRA, as `build.build_real_model`), the LoRA settings given
to the trainer as its `peft_config` (so the reference is the adapter-disabled policy, as the estimate assumes).
The data is a tiny in-memory dataset shaped to the setup: every row exactly `prompt_len` prompt tokens and a
completion filling `seq_len` (its last token the EOS TRL appends), written as words of a local one-word-per-id
tokenizer (no Hub download), so TRL's own tokenization yields exactly those ids. GRPO generates with transformers
and `min_new_tokens = max_completion_length`, so every completion runs to full length (the upper end the estimate
assumes); its reward is the completion's text length.

The first optimizer step is a warm-up (GRPO: one whole generation cycle of `steps_per_generation` steps); the peaks
are over the `steps` after it. On CUDA the phases are read by hooks: `generation` (GRPO's generate and scoring,
`_generate_and_score_completions`), `forward` (`compute_loss`), `backward` (up to `on_pre_optimizer_step`) and
`optimizer` (up to `on_step_end`). On the CPU the steps run and the peaks are None. The record is run_probe's with
the objective and its settings added (TrlProbeRecord); its `options` re-resolve the setup, objective included, so
`vramplan validate --measurements` scores it against the objective's estimate.
"""

from __future__ import annotations

import contextlib
import gc
import random
import tempfile
import time
from typing import Any, Callable

import torch

from vramplan.measure.build import LOAD_DTYPE, attention_implementation, hf_config_for
from vramplan.measure.probe import NvmlPeak, ProbeRecord, probe_fields, refuse_large_cpu_probe
from vramplan.models.catalog import ResolvedModel
from vramplan.training import Method, Optimizer, Precision, TrainingSetup, objective_options

OBJECTIVES = ("dpo", "kto", "orpo", "grpo")
# transformers OptimizerNames (transformers/training_args.py) for each --optimizer; TrainingArguments `optim`.
TRAINER_OPTIM = {
    Optimizer.ADAMW: "adamw_torch",
    Optimizer.ADAMW_FUSED: "adamw_torch_fused",
    Optimizer.ADAMW_8BIT: "adamw_bnb_8bit",
    Optimizer.PAGED_ADAMW: "paged_adamw_32bit",
    Optimizer.PAGED_ADAMW_8BIT: "paged_adamw_8bit",
    Optimizer.SGD: "sgd",
    Optimizer.ADAFACTOR: "adafactor",
}
# The synthetic tokenizer's special tokens take the first ids; every other id is the word "t<id>".
SPECIAL_TOKENS = ("<eos>", "<pad>", "<unk>")


class TrlProbeRecord(ProbeRecord):
    """run_probe's record, plus the objective and its settings as RunOptions fields (training.objective_options:
    prompt_len, completion_len, num_generations, steps_per_generation, beta, precompute_ref, ...)."""

    objective: str
    objective_settings: dict[str, Any]


def synthetic_tokenizer(vocab_size: int):
    """A fast tokenizer with one whitespace-separated word per id: "t7 t42" -> [7, 42], `<eos>` 0, `<pad>` 1."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update((f"t{index}", index) for index in range(len(SPECIAL_TOKENS), vocab_size))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()  # joins the words with spaces
    eos, pad, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=pad, unk_token=unk)


def _words(rng: random.Random, count: int, vocab_size: int) -> str:
    return " ".join(f"t{rng.randrange(len(SPECIAL_TOKENS), vocab_size)}" for _ in range(count))


def synthetic_dataset(setup: TrainingSetup, rows: int, vocab_size: int, seed: int = 0):
    """`rows` examples of the setup's objective: a prompt of `prompt_len` tokens (DPO/KTO without one: 1) and
    completions of `completion_len` tokens counting the EOS TRL appends (GRPO: the prompt alone)."""
    from datasets import Dataset

    rng = random.Random(seed)
    prompt_len = setup.prompt_len or 1
    completion = setup.completion_len - 1  # DPO/KTO: TRL's _prepare_dataset appends the EOS token
    if completion < 0 or (setup.objective != "grpo" and completion < 1):
        raise ValueError(f"{setup.objective}: seq_len {setup.seq_len} leaves no completion after the prompt")
    examples = []
    for row in range(rows):
        prompt = _words(rng, prompt_len, vocab_size)
        if setup.objective in ("dpo", "orpo"):
            examples.append({"prompt": prompt, "chosen": " " + _words(rng, completion, vocab_size),
                             "rejected": " " + _words(rng, completion, vocab_size)})
        elif setup.objective == "kto":
            examples.append({"prompt": prompt, "completion": " " + _words(rng, completion, vocab_size),
                             "label": row % 2 == 0})  # half desirable, as the trace assumes
        else:
            examples.append({"prompt": prompt})
    return Dataset.from_list(examples)


def build_base_model(config: dict[str, Any], setup: TrainingSetup, device: str):
    """The model a TRL user passes: random weights in the load dtype; QLoRA 4-bit (quantized while loading, so through
    a saved checkpoint) and k-bit prepared. LoRA is left to the trainer's `peft_config`."""
    import transformers

    hf_config = hf_config_for(config)
    dtype = LOAD_DTYPE[setup.precision]
    attention = attention_implementation(setup)
    if setup.method is not Method.QLORA:
        with torch.device(device):
            return transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype, attn_implementation=attention)
    with tempfile.TemporaryDirectory() as folder:
        transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype).save_pretrained(folder)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=device, quantization_config=_quantization_config(setup),
            attn_implementation=attention)
    if setup.quant.kbit_prep:
        import peft

        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=setup.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _quantization_config(setup: TrainingSetup):
    """bitsandbytes 4-bit as build.py's QLoRA loads it (uint8 storage, bf16 compute)."""
    import transformers

    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=setup.quant.quant_type,
        bnb_4bit_use_double_quant=setup.quant.double_quant, bnb_4bit_compute_dtype=torch.bfloat16)


def lora_config(setup: TrainingSetup):
    """The setup's LoRA as peft's LoraConfig (as build.py wraps it), or None for full fine-tuning."""
    if setup.method is Method.FULL:
        return None
    import peft

    lora = setup.lora
    targets = lora.targets if isinstance(lora.targets, str) else list(lora.targets)
    return peft.LoraConfig(r=lora.rank, lora_alpha=2 * lora.rank, lora_dropout=lora.dropout, target_modules=targets)


def _length_reward(completions, **kwargs) -> list[float]:
    """GRPO's reward: the completion's text length (any reward does for memory; this one is not constant)."""
    return [float(len(completion)) for completion in completions]


def trainer_config(setup: TrainingSetup, max_steps: int, output_dir: str, device: str):
    """The objective's TRL config: the setup's batch, lengths, precision, checkpointing and optimizer, nothing saved,
    logged or reported."""
    import trl

    common = dict(
        output_dir=output_dir, max_steps=max_steps, per_device_train_batch_size=setup.batch_size,
        gradient_accumulation_steps=1, learning_rate=1e-5, optim=TRAINER_OPTIM[setup.optimizer],
        gradient_checkpointing=setup.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=setup.precision in (Precision.BF16, Precision.BF16_MIXED), fp16=setup.precision is Precision.FP16_MIXED,
        use_cpu=device == "cpu", save_strategy="no", report_to="none", logging_steps=max_steps + 1,
        disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    if setup.objective == "dpo":
        return trl.DPOConfig(**common, max_length=setup.seq_len, precompute_ref_log_probs=setup.precompute_ref)
    if setup.objective == "kto":
        return trl.KTOConfig(**common, max_length=setup.seq_len, precompute_ref_log_probs=setup.precompute_ref)
    if setup.objective == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, max_length=setup.seq_len)
    grpo = setup.grpo
    return trl.GRPOConfig(
        **common, num_generations=grpo.num_generations, steps_per_generation=grpo.steps_per_generation,
        beta=grpo.beta, max_completion_length=setup.completion_len,
        generation_kwargs={"min_new_tokens": setup.completion_len})


def warmup_steps(setup: TrainingSetup) -> int:
    """Steps before the measured ones: one (optimizer states then exist); GRPO a whole generation cycle, so that the
    measured steps start with a generation."""
    return setup.grpo.steps_per_generation if setup.objective == "grpo" else 1


def build_trainer(config: dict[str, Any], setup: TrainingSetup, steps: int, output_dir: str, device: str):
    """The objective's TRL trainer over the synthetic data, ready to `train()` for warm-up plus `steps` steps."""
    import trl

    vocab_size = int(config["vocab_size"])
    total = warmup_steps(setup) + steps
    args = trainer_config(setup, total, output_dir, device)
    rows = total * setup.batch_size * (setup.grpo.steps_per_generation if setup.grpo else 1)
    common = dict(model=build_base_model(config, setup, device), args=args,
                  train_dataset=synthetic_dataset(setup, rows, vocab_size),
                  processing_class=synthetic_tokenizer(vocab_size), peft_config=lora_config(setup))
    if setup.objective == "dpo":
        return trl.DPOTrainer(**common)
    if setup.objective == "kto":
        return trl.KTOTrainer(**common)
    if setup.objective == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(**common)
    return trl.GRPOTrainer(reward_funcs=_length_reward, **common)


class PhasePeaks:
    """Each phase's torch.cuda.max_memory_allocated over the measured steps, the largest max_memory_reserved and
    the NVML peak (`nvml`, sampled from the first measured step on); on the CPU (`cuda` False) only the measured
    steps' wall time."""

    def __init__(self, warmup: int, cuda: bool, nvml: NvmlPeak | None = None):
        self.warmup, self.cuda, self.nvml = warmup, cuda, nvml
        self.peaks: dict[str, int] = {}
        self.reserved = 0
        self.measuring = False
        self.started: float | None = None
        self.seconds = 0.0

    def mark(self, phase: str) -> None:
        if not (self.measuring and self.cuda):
            return
        torch.cuda.synchronize()
        self.peaks[phase] = max(self.peaks.get(phase, 0), torch.cuda.max_memory_allocated())
        self.reserved = max(self.reserved, torch.cuda.max_memory_reserved())
        torch.cuda.reset_peak_memory_stats()

    def step_begin(self, step: int) -> None:
        if step == self.warmup and not self.measuring:  # global_step counts the steps done
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            if self.nvml is not None:
                self.nvml.peak = self.nvml.used()
                self.nvml.__enter__()
            self.measuring, self.started = True, time.perf_counter()

    def stop(self) -> None:
        """Stop NVML's sampling thread (if the measured steps started it)."""
        if self.nvml is not None and self.measuring:
            self.nvml.__exit__(None, None, None)

    def step_end(self) -> None:
        self.mark("optimizer")
        if self.measuring:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.started

    def attach(self, trainer) -> None:
        """Hooks on the trainer: a callback for step and optimizer events, wrappers for the loss and GRPO's
        generation (instance attributes, so TRL's own methods run inside them)."""
        from transformers import PrinterCallback, TrainerCallback

        peaks = self

        class _Events(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                peaks.step_begin(state.global_step)

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                peaks.mark("backward")

            def on_step_end(self, args, state, control, **kwargs):
                peaks.step_end()

        trainer.remove_callback(PrinterCallback)  # its log lines would go to stdout, which carries the results
        trainer.add_callback(_Events())
        self._wrap(trainer, "compute_loss", "forward")
        if hasattr(trainer, "_generate_and_score_completions"):
            self._wrap(trainer, "_generate_and_score_completions", "generation")

    def _wrap(self, trainer, name: str, phase: str) -> None:
        method = getattr(trainer, name)

        def wrapped(*args, **kwargs):
            result = method(*args, **kwargs)
            self.mark(phase)
            return result

        setattr(trainer, name, wrapped)


def run_trl_probe(resolved: ResolvedModel, setup: TrainingSetup, *, steps: int = 3, device: str = "auto",
                  options: dict[str, Any] | None = None, probe_id: str | None = None,
                  progress: Callable[[str], None] = lambda _: None) -> TrlProbeRecord:
    """Warm-up, then `steps` optimizer steps of the setup's TRL trainer; the record run_probe writes, its peaks the
    maxima over the measured steps (None on the CPU)."""
    from vramplan.errors import CannotCheckError, UsageError
    from vramplan.measure.hf_step import quiet_libraries

    if setup.objective not in OBJECTIVES:
        raise UsageError(f"run_trl_probe runs TRL's {', '.join(OBJECTIVES)} trainers, not {setup.objective}")
    if setup.grpo is not None and setup.grpo.generation != "transformers":
        raise UsageError(f"--generation {setup.grpo.generation}: the probe generates with transformers only")
    if device in ("auto", "cuda") and not torch.cuda.is_available():
        raise CannotCheckError("the TRL probe measures a real GPU and this torch sees no CUDA device (device='cpu' "
                               "runs the steps on the CPU, without peaks)")
    device = "cuda" if device == "auto" else device
    base = probe_fields(resolved, setup, device=device, options=options, probe_id=probe_id)
    base.update(objective=setup.objective, objective_settings={
        key: value for key, value in objective_options(setup).items() if key != "objective"})
    if device == "cpu":
        refuse_large_cpu_probe(base["estimate"]["peak_allocated_bytes"])
    with quiet_libraries(), _quiet_trl():
        if device == "cpu":
            return _cpu_trl_probe(resolved, setup, steps, base, progress)
        return _cuda_trl_probe(resolved, setup, steps, base, progress)


@contextlib.contextmanager
def _quiet_trl():
    """TRL's and datasets' remarks about defaults and experimental features are not the probe's business."""
    import warnings

    from datasets.utils import logging as datasets_logging

    bars = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(trl|datasets|accelerate)\.")
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(trl|datasets|accelerate)\.")
            yield
    finally:
        if bars:
            datasets_logging.enable_progress_bar()


def _train(resolved: ResolvedModel, setup: TrainingSetup, steps: int, device: str, peaks: PhasePeaks,
           progress: Callable[[str], None]) -> None:
    trainer = None
    try:
        with tempfile.TemporaryDirectory() as output_dir:
            progress(f"building {resolved.name} with random weights and TRL's {setup.objective} trainer")
            trainer = build_trainer(resolved.config, setup, steps, output_dir, device)
            peaks.attach(trainer)
            progress(f"{peaks.warmup} warm-up step(s), then {steps} measured")
            trainer.train()
    finally:
        peaks.stop()
        if trainer is not None:
            trainer.accelerator.free_memory()
        del trainer
        gc.collect()  # the trainer, its callbacks and the model hold each other: free them before the next probe
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _rows_tokens(setup: TrainingSetup) -> int:
    """Tokens one optimizer step trains on: every row (a DPO pair is two) at its full length."""
    return setup.rows * setup.seq_len


def _cpu_trl_probe(resolved: ResolvedModel, setup: TrainingSetup, steps: int, base: dict,
                   progress: Callable[[str], None]) -> TrlProbeRecord:
    peaks = PhasePeaks(warmup_steps(setup), cuda=False)
    _train(resolved, setup, steps, "cpu", peaks, progress)
    seconds = peaks.seconds / steps
    return TrlProbeRecord(**base, status="ok", gpu="cpu", max_memory_allocated=None, max_memory_reserved=None,
                          nvml_peak_used=None, cuda_context_bytes=None, peak_phase=None, phase_peaks={},
                          step_seconds=seconds, tokens_per_second=_rows_tokens(setup) / seconds if seconds else None)


def _cuda_trl_probe(resolved: ResolvedModel, setup: TrainingSetup, steps: int, base: dict,
                    progress: Callable[[str], None]) -> TrlProbeRecord:
    from vramplan.allocator.caching import AllocatorConfig
    from vramplan.allocator.config import describe

    if setup.allocator != AllocatorConfig():
        torch.cuda.memory._set_allocator_settings(describe(setup.allocator))
    gc.collect()  # what an earlier probe left (an OOM's traceback held its tensors) goes back to the device
    torch.cuda.empty_cache()
    index = torch.cuda.current_device()
    gpu = torch.cuda.get_device_name(index)
    nvml = NvmlPeak(index)
    before = nvml.used()
    torch.ones(1, device="cuda")  # creates the CUDA context (or finds it)
    torch.cuda.synchronize()
    context = nvml.used() - before - torch.cuda.memory_reserved()
    peaks = PhasePeaks(warmup_steps(setup), cuda=True, nvml=nvml)
    try:
        _train(resolved, setup, steps, "cuda", peaks, progress)
    except torch.cuda.OutOfMemoryError as err:
        return TrlProbeRecord(**base, status="oom", gpu=gpu, max_memory_allocated=torch.cuda.max_memory_allocated(),
                              max_memory_reserved=torch.cuda.max_memory_reserved(), nvml_peak_used=None,
                              cuda_context_bytes=context, peak_phase=None, phase_peaks=peaks.peaks,
                              step_seconds=None, tokens_per_second=None, error=str(err).splitlines()[0])
    peak_phase = max(peaks.peaks, key=peaks.peaks.get)
    seconds = peaks.seconds / steps
    return TrlProbeRecord(**base, status="ok", gpu=gpu, max_memory_allocated=peaks.peaks[peak_phase],
                          max_memory_reserved=peaks.reserved, nvml_peak_used=nvml.peak, cuda_context_bytes=context,
                          peak_phase=peak_phase, phase_peaks=peaks.peaks, step_seconds=seconds,
                          tokens_per_second=_rows_tokens(setup) / seconds)
