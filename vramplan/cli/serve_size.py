"""`vramplan serve-size`: how many sequences of a context vLLM can serve on a GPU (vLLM's KV-cache rule)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vramplan.cli import options as o

ServeModel = Annotated[
    str, typer.Option("--model", "-m", help="Catalog name, size alias (8b, 70b, ...), Hub id (org/name) or path to "
                                            "config.json/folder.", autocompletion=o.complete_models)]
ServeGpu = Annotated[
    Optional[str], typer.Option("--gpu", help="A catalog GPU (rtx-4090, h100-sxm5-80gb; vramplan catalog gpus) or a "
                                              "memory size (24GB = 24x10^9 bytes, 80GiB = 80x2^30 bytes), one per "
                                              "tensor-parallel rank. Without it: every catalog system, at the "
                                              "smallest tensor-parallel size (1, 2, 4, 8) that fits.",
                                autocompletion=o.complete_gpus)]
TensorParallel = Annotated[Optional[int], typer.Option(
    "--tp", "--gpus", "--tensor-parallel-size", min=1, max=1024,
    help="Tensor-parallel size: GPUs the model is split over. Without --gpu: the only size tried. [default: 1]")]
ServeAllowRocm = Annotated[bool, typer.Option("--allow-rocm", help="Without --gpu: size ROCm systems too (the rule "
                                                                   "modelled is vLLM's CUDA one).")]
Weights = Annotated[str, typer.Option("--weights", help="bf16 | fp16 | fp8 | fp8-channel | fp8-block | int8 | awq | "
                                                        "gptq | nf4 | q8_0 | q6_k | q5_k | q4_k | q4_0 | q3_k | q2_k")]
KvDtypeOpt = Annotated[str, typer.Option("--kv-dtype", help="auto (the model dtype, 2 bytes) | fp8 (1 byte)")]
Context = Annotated[Optional[int], typer.Option(
    "--context", "--max-model-len", min=1, max=2**24,
    help="Tokens per sequence (vLLM max_model_len). [default: the model's max_position_embeddings]")]
Concurrency = Annotated[Optional[int], typer.Option("--concurrency", min=1, max=2**20,
                                                   help="Sequences of --context wanted at once; exit 3 if they do not "
                                                        "fit.")]
Utilization = Annotated[Optional[float], typer.Option(
    "--gpu-memory-utilization", help="Share of the GPU vLLM may use (0 to 1). [default: the engine's, 0.92 for 0.31]")]
MaxNumSeqs = Annotated[Optional[int], typer.Option("--max-num-seqs", min=1, max=2**20,
                                                  help="vLLM max_num_seqs. [default: by GPU memory, 256 or 1024]")]
MaxBatched = Annotated[Optional[int], typer.Option(
    "--max-num-batched-tokens", min=1, max=2**24,
    help="vLLM max_num_batched_tokens: the profiling run's size. [default: by GPU memory and --entrypoint]")]
EntrypointOpt = Annotated[str, typer.Option("--entrypoint", help="serve (vllm serve) | llm (the LLM class): the "
                                                                 "batch defaults differ")]
Eager = Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs (vLLM --enforce-eager).")]
Engine = Annotated[str, typer.Option("--engine", help="vllm-0.31 | vllm-0.10 | vllm-0.6.4: whose memory rule")]


def serve_size_command(
    model: ServeModel,
    gpu: ServeGpu = None,
    tp: TensorParallel = None,
    weights: Weights = "bf16",
    kv_dtype: KvDtypeOpt = "auto",
    context: Context = None,
    concurrency: Concurrency = None,
    gpu_memory_utilization: Utilization = None,
    max_num_seqs: MaxNumSeqs = None,
    max_num_batched_tokens: MaxBatched = None,
    entrypoint: EntrypointOpt = "serve",
    enforce_eager: Eager = False,
    engine: Engine = "vllm-0.31",
    allow_rocm: ServeAllowRocm = False,
    catalog: o.CatalogDir = None,
    fmt: o.Format = "table",
) -> None:
    """Size vLLM serving: weights, the profiling run's activations, CUDA graphs and the KV cache left by vLLM's
    gpu_memory_utilization rule; the sequences of --context that fit. Without --gpu, every catalog system at its
    smallest fitting tensor-parallel size, cheapest rent first. Exit 3 when it does not fit (anywhere)."""
    from vramplan.cli.render import check_format

    check_format(fmt)
    options = _serve_options(weights, kv_dtype, tp or 1, gpu_memory_utilization, context, concurrency, max_num_seqs,
                             max_num_batched_tokens, entrypoint, enforce_eager, engine)
    if gpu is None:
        _serve_fleet(model, options, tp, allow_rocm, catalog, fmt)
        return
    from vramplan.errors import EXIT_DOES_NOT_FIT
    from vramplan.serving.sizing import plan_serving

    plan = plan_serving(model, gpu, options, catalog)
    if fmt == "json":
        from vramplan.cli.render import emit_json

        emit_json(plan, "serve-size")
    else:
        from vramplan.cli.render_serving import emit_serve_plan

        emit_serve_plan(plan)
    if not plan.fits:
        raise typer.Exit(EXIT_DOES_NOT_FIT)


def _serve_options(weights: str, kv_dtype: str, tp: int, gpu_memory_utilization: float | None, context: int | None,
                   concurrency: int | None, max_num_seqs: int | None, max_num_batched_tokens: int | None,
                   entrypoint: str, enforce_eager: bool, engine: str):
    """The options checked, as ServeOptions (one-line usage errors)."""
    from vramplan.errors import UsageError
    from vramplan.serving.formats import WeightFormat
    from vramplan.serving.sizing import ServeOptions

    choices = {f.value: f for f in WeightFormat}
    if weights.lower() not in choices:
        raise UsageError(f"unknown --weights {weights!r}; choose {', '.join(choices)}")
    if kv_dtype not in ("auto", "fp8"):
        raise UsageError(f"unknown --kv-dtype {kv_dtype!r}; choose auto or fp8")
    if entrypoint not in ("serve", "llm"):
        raise UsageError(f"unknown --entrypoint {entrypoint!r}; choose serve or llm")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:  # nan fails both comparisons
        raise UsageError(f"--gpu-memory-utilization {gpu_memory_utilization!r}: give a number above 0 and at most 1")
    return ServeOptions(
        weights=choices[weights.lower()], kv_dtype=kv_dtype, tensor_parallel=tp,
        gpu_memory_utilization=gpu_memory_utilization, max_model_len=context, concurrency=concurrency,
        max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, entrypoint=entrypoint,
        enforce_eager=enforce_eager, engine=engine,
    )


def _serve_fleet(model: str, options, tp: int | None, allow_rocm: bool, catalog: str | None, fmt: str) -> None:
    """Every catalog system (only `tp` when given); exit 3 when none serves the target."""
    from vramplan.errors import EXIT_DOES_NOT_FIT
    from vramplan.serving.fleet import TENSOR_PARALLEL_SIZES, plan_fleet

    fleet = plan_fleet(model, options, catalog, allow_rocm, (tp,) if tp else TENSOR_PARALLEL_SIZES)
    if fmt == "json":
        from vramplan.cli.render import emit_json

        emit_json(fleet, "serve-plan")
    else:
        from vramplan.cli.render_serving import emit_fleet_plan

        emit_fleet_plan(fleet)
    if not fleet.fits:
        raise typer.Exit(EXIT_DOES_NOT_FIT)
