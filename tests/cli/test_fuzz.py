"""A property-based fuzz of the whole CLI: every command, its options with good, edge and malformed values, and
malformed files. Whatever the input: exit code 0, 2, 3 or 4; never a traceback; an error is one line; JSON holds only
finite numbers.

Bounded for CI (a fixed seed, a few hundred runs, well under 20 s): the real trace, the GPU probe, the validation
matrix and the report's rendering are stubbed (each has its own tests); everything before them (option parsing,
--from files, model configs, catalogs, the estimate) runs for real.
"""

import contextlib
import io
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vramplan.cli.app import main
from vramplan.errors import CannotCheckError

ALLOWED_EXIT_CODES = {0, 2, 3, 4}
FUZZ_EXAMPLES = 250
FUZZ_SECONDS = 12.0  # the examples' budget; with the set-up the test stays under 20 s
MIN_RUNS = 40  # a floor that a loaded 2-core machine still reaches (about 240 runs when it is idle)

# Values that have broken parsers somewhere: empty, signs, non-finite, huge, unicode, lists, paths.
EDGE_VALUES = ["yaml", "", "0", "-1", "1", "2", "7", "1.5", "inf", "-inf", "nan", "1e309", "1e12", str(2**63), "9" * 400, "abc",
               "0,1", "1,", ",", "10%", "150%", "-5%", "50M", "2B", "x" * 300, "ü", "\x00", "../../etc/passwd",
               "/nonexistent/x.json", "--model"]
GOOD_VALUES = {
    "--model": ["8b", "1b", "70b", "70b", "405b", "qwen3-0.6b", "mixtral-8x7b", "llama3-8b", "org/name"],
    "--method": ["full", "lora", "qlora", "dpo"],
    "--batch-size": ["1", "4", "0"],
    "--seq-len": ["512", "2048", "0"],
    "--precision": ["bf16", "bf16-mixed", "fp16-mixed", "fp32", "fp8"],
    "--optimizer": ["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "sgd", "adafactor", "lion"],
    "--lora-rank": ["8", "64", "0"],
    "--lora-targets": ["all-linear", "q_proj,v_proj", "nothing"],
    "--lora-dropout": ["0", "0.1", "1.5"],
    "--gpus": ["1", "2", "8"],
    "--nodes": ["1", "2"],
    "--strategy": ["ddp", "zero2", "zero3", "fsdp", "fsdp-hybrid", "device-map", "single", "tp"],
    "--offload": ["none", "optimizer", "params"],
    "--stack": ["hf", "axolotl", "llama-factory", "torchtune", "unsloth"],
    "--loss": ["standard", "chunked", "fused"],
    "--attn": ["sdpa", "flash", "eager"],
    "--format": ["table", "json", "json"],
    "--headroom": ["10%", "0.2", "0"],
    "--gpu": ["rtx-4090", "4090", "24GB", "h100", "80GiB", "h100-sxm5-80gb"],
    "--devices": ["0", "0,1", "9"],
    "--tokens": ["50M", "1B", "0"],
    "--epochs": ["1", "3", "0"],
    "--mfu": ["0.4", "2"],
    "--amortise-years": ["3", "0"],
    "--kwh-price": ["0.15", "-1"],
    "--max-nodes": ["1", "4"],
    "--top": ["3", "0"],
    "--solve": ["batch-size", "seq-len", "lora-rank", "tokens"],
    "--emit": ["deepspeed", "fsdp", "accelerate", "slurm"],
    "--steps": ["1", "0"],
    "--device": ["auto", "cuda", "cpu", "tpu"],
    "--subset": ["ci", "none", "full", "bogus"],
    "--case": ["tiny-llama-lora", "nope"],
}
SWITCHES = ["--gradient-checkpointing", "--no-gradient-checkpointing", "--double-quant"]
SIZING = ["--model", "--method", "--batch-size", "--seq-len", "--precision", "--optimizer", "--lora-rank",
          "--lora-targets", "--lora-dropout", "--stack", "--loss", "--attn", "--format", "--from"]
COMMANDS = {
    "estimate": SIZING + ["--gpus", "--nodes", "--strategy", "--offload", "--emit", "--emit-to"],
    "trace": SIZING + ["--gpus", "--nodes", "--strategy", "--offload"],
    "plan": SIZING + ["--tokens", "--epochs", "--headroom", "--mfu", "--amortise-years", "--kwh-price", "--max-nodes",
                      "--top", "--catalog", "--emit", "--emit-to"],
    "fit": SIZING + ["--gpu", "--gpus", "--strategy", "--solve", "--headroom", "--catalog"],
    "check": SIZING + ["--gpu", "--gpus", "--devices", "--strategy", "--headroom", "--catalog"],
    "probe": SIZING + ["--steps", "--device", "--out"],
    "validate": ["--subset", "--case", "--format", "--matrix", "--out"],
    "models": ["--format"],
    "catalog gpus": ["--format", "--catalog"],
    "catalog systems": ["--format", "--catalog"],
    "catalog show": ["--format", "--catalog"],
    "report": ["--out", "--catalog"],
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files a user might point vramplan at by mistake, or that are subtly broken."""
    folder = tmp_path_factory.mktemp("fuzz")
    files = {
        "deep.json": "[" * 5000 + "]" * 5000,
        "deep.yaml": "a:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),
        "binary.json": b"\xff\xfe\x00\x81garbage",
        "empty.yaml": "",
        "list.yaml": "- 1\n- 2\n",
        "heads0.json": json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 0,
                                   "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}),
        "huge.json": json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 8,
                                 "num_key_value_heads": 1e12, "num_hidden_layers": 2, "intermediate_size": 128,
                                 "vocab_size": 1e12}),
        "axolotl.yml": "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nmicro_batch_size: .inf\nfsdp: -1\n",
        "lf.yaml": "model_name_or_path: true\nstage: dpo\nfinetuning_type: lora\ncutoff_len: abc\n",
        "trl.json": json.dumps({"model_name_or_path": "x/y", "max_length": -3, "per_device_train_batch_size": "big"}),
        "ds.json": json.dumps({"zero_optimization": 7, "train_micro_batch_size_per_gpu": [1]}),
        "jobs.toml": "[[job]]\nmodel = 5\n",
        "catalog/gpus/x.toml": "id = 'x'\nbf16_dense_tflops = inf\n",
        "badcat/gpus/y.toml": b"\xff\xfe",
    }
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    (folder / "dir.toml").mkdir()
    return folder


def _file_values(folder):
    names = ["deep.json", "deep.yaml", "binary.json", "empty.yaml", "list.yaml", "heads0.json", "huge.json",
             "axolotl.yml", "lf.yaml", "trl.json", "ds.json", "jobs.toml", "dir.toml", "nonexistent.yaml"]
    return [str(folder / name) for name in names]


@st.composite
def invocations(draw, folder):
    command = draw(st.sampled_from(sorted(COMMANDS)))
    files = _file_values(folder)
    args = command.split()
    if command == "catalog show":
        args.append(draw(st.sampled_from(["h100-sxm5-80gb", "nope", ""] + EDGE_VALUES[:4])))
    if command == "report":
        args.append(draw(st.sampled_from(files + ["examples/jobs.toml"])))
    sizing = command in ("estimate", "trace", "plan", "fit", "check", "probe")
    if sizing and draw(st.integers(0, 9)):
        args += ["--model", draw(st.sampled_from(GOOD_VALUES["--model"]))]
    if command in ("fit", "check") and draw(st.integers(0, 3)):
        args += ["--gpu", draw(st.sampled_from(GOOD_VALUES["--gpu"]))]
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from(COMMANDS[command] + (SWITCHES if sizing else [])))
        if option in SWITCHES:
            args.append(option)
            continue
        if option in ("--from", "--catalog", "--matrix", "--emit-to", "--out"):
            if draw(st.integers(0, 2)):
                continue  # files are a third as likely as other options, so the answers run too
            pool = files + [str(folder / "catalog"), str(folder / "badcat"), str(folder / "out")]
        elif option == "--model" and draw(st.booleans()):
            pool = files
        elif option in GOOD_VALUES and draw(st.integers(0, 4)):  # mostly sensible values, so the answers run too
            pool = GOOD_VALUES[option]
        else:
            pool = EDGE_VALUES
        args += [option, draw(st.sampled_from(pool))]
    return args


def _no_nonfinite(text: str) -> None:
    def refuse(constant):
        raise AssertionError(f"non-finite number in JSON: {constant}")

    json.loads(text, parse_constant=refuse)


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """The slow back ends replaced by a 'cannot check' (exit 4); what comes before them runs for real."""
    def cannot(*_args, **_kwargs):
        raise CannotCheckError("fuzz: the slow step is stubbed")

    monkeypatch.setattr("vramplan.measure.trace.trace_memory", cannot)
    monkeypatch.setattr("vramplan.measure.probe.run_probe", cannot)
    monkeypatch.setattr("vramplan.validate.score.score_case", cannot)
    monkeypatch.setattr("vramplan.report.render.write_report", cannot)
    monkeypatch.setattr("vramplan.models.hub.hub_config",
                        lambda model: (_ for _ in ()).throw(CannotCheckError("fuzz: no network")))
    monkeypatch.chdir(tmp_path)  # probe and validate write under ./validation by default
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "jobs.toml").write_text("")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "100")


def test_cli_fuzz(bad_files, stubbed):
    started = time.monotonic()
    runs = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(invocations(bad_files))
    def one(args):
        if time.monotonic() - started > FUZZ_SECONDS:
            return  # the budget is spent: the remaining examples pass untried (the count below says how many ran)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        runs.append((args, code))
        stderr = err.getvalue()
        assert code in ALLOWED_EXIT_CODES, (args, code, stderr)
        assert "Traceback" not in stderr, (args, stderr)
        assert all(line.startswith(("vramplan:", "[")) for line in stderr.splitlines()), (args, stderr)
        if code in (2, 4):
            errors = [line for line in stderr.splitlines() if line.startswith("vramplan: error:")]
            assert len(errors) == 1 and stderr.endswith("\n"), (args, stderr)
        if "json" in args and code in (0, 3) and out.getvalue().strip().startswith("{"):
            _no_nonfinite(out.getvalue())

    one()
    codes = {code: sum(1 for _, c in runs if c == code) for code in ALLOWED_EXIT_CODES}
    print(f"fuzz: {len(runs)} runs, exit codes {codes}")
    assert codes[0] and codes[2], codes  # both answers and refusals were reached
    assert len(runs) >= MIN_RUNS, f"only {len(runs)} runs in {FUZZ_SECONDS} s"
