"""`vramplan serve`'s JSON API (vramplan/web/app.py) through the ASGI test client: every answer is the CLI's own
`--format json` document, bad input is a 4xx with the CLI's one-line message, and the bounds hold."""

import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from vramplan.cli.app import main  # noqa: E402
from vramplan.web.app import create_app  # noqa: E402
from vramplan.web.run_body import MAX_BODY_BYTES, MAX_CONFIG_BYTES  # noqa: E402

TINY = "validation/configs/tiny-llama.json"


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(), base_url="http://localhost")


def _cli_json(capsys, *args) -> tuple[int, dict]:
    code = main([*args, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("body, flags", [
    ({"model": "8b", "method": "lora", "options": {"batch_size": 4, "seq_len": 4096}},
     ["--model", "8b", "--method", "lora", "--batch-size", "4", "--seq-len", "4096"]),
    ({"model": "70b", "method": "qlora", "options": {"gradient_checkpointing": False}},
     ["--model", "70b", "--method", "qlora", "--no-gradient-checkpointing"]),
    ({"model": "qwen2.5-7b", "method": "full", "options": {"gpus": 8, "strategy": "zero3", "precision": "bf16"}},
     ["--model", "qwen2.5-7b", "--method", "full", "--gpus", "8", "--strategy", "zero3", "--precision", "bf16"]),
    ({"model": "8b", "method": "lora", "options": {"objective": "grpo", "generation": "vllm-colocate"}},
     ["--model", "8b", "--method", "lora", "--objective", "grpo", "--generation", "vllm-colocate"]),
])
def test_estimate_is_the_cli_document_to_the_byte(client, capsys, body, flags):
    answer = client.post("/api/estimate", json=body)
    assert answer.status_code == 200
    main(["estimate", *flags, "--format", "json"])
    assert answer.text == capsys.readouterr().out


def test_check_plan_and_fit_match_the_cli(client, capsys):
    run = {"model": "70b", "method": "lora"}
    check = client.post("/api/check", json={**run, "gpu": "rtx-4090"}).json()
    code, cli = _cli_json(capsys, "check", "--gpu", "rtx-4090", "--model", "70b", "--method", "lora")
    assert code == 3 and check["exit_code"] == 3 and check["fits"] is False
    assert check["suggestions"] == cli["suggestions"] and check["estimate"] == cli["estimate"]
    assert check["commands"][0].startswith("vramplan check --model 70b --method lora --gpu rtx-4090")
    plan = client.post("/api/plan", json={"model": "8b", "method": "qlora", "tokens": "200M"}).json()
    _, cli = _cli_json(capsys, "plan", "--model", "8b", "--method", "qlora", "--tokens", "200M")
    assert plan == cli and plan["options"]
    fit = client.post("/api/fit", json={"model": "8b", "method": "lora", "gpu": "rtx-4090", "solve": "seq-len"})
    _, cli = _cli_json(capsys, "fit", "--gpu", "rtx-4090", "--model", "8b", "--method", "lora", "--solve", "seq-len")
    assert fit.json() == cli


def test_pasted_config_json_and_training_config(client, capsys):
    config = json.loads(open(TINY).read())
    answer = client.post("/api/estimate", json={"config": config, "method": "full", "options": {"batch_size": 2}})
    _, cli = _cli_json(capsys, "estimate", "--model", TINY, "--method", "full", "--batch-size", "2")
    assert answer.status_code == 200
    assert answer.json()["peak_allocated_bytes"] == cli["peak_allocated_bytes"]
    assert answer.json()["model"]["name"] == "tiny-llama"  # its _name_or_path, not the server's temporary folder
    unnamed = {k: v for k, v in config.items() if k != "_name_or_path"}
    answer = client.post("/api/estimate", json={"config": unnamed, "method": "full"})
    assert answer.json()["model"]["name"] == "pasted config.json"
    axolotl = "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nmicro_batch_size: 2\nsequence_len: 4096\n"
    answer = client.post("/api/estimate", json={"from_config": {"name": "train.yaml", "text": axolotl}})
    assert answer.status_code == 200
    setup = answer.json()["setup"]
    assert (setup["batch_size"], setup["seq_len"], setup["stack"]) == (2, 4096, "axolotl")


@pytest.mark.parametrize("body, status, message", [
    ({"model": "8b", "options": {"batch_size": 0}}, 422, "--batch-size must be a positive integer"),
    ({"model": "8b", "options": {"seq_len": 10**9}}, 422, "--seq-len 1000000000: at most"),
    ({"model": "8b", "options": {"unknown": 1}}, 422, "unknown option 'unknown'"),
    ({"model": "/etc/passwd"}, 422, "not in vramplan's catalog"),
    ({"model": "meta-llama/Some-Unknown-Model"}, 422, "not in vramplan's catalog"),
    ({"model": "8b", "method": "qlora", "options": {"objective": "orpo"}}, 422, "--objective orpo with --method qlora"),
    ({"from_config": {"name": "x.yaml", "text": "base_model: /data/models/mine\nadapter: lora\n"}}, 422,
     "not in vramplan's catalog"),
    ({"from_config": {"name": "mine.yaml", "text": "foo: 1\n"}}, 422, "mine.yaml: cannot tell which trainer"),
    ({"from_config": {"name": "x.exe", "text": "x"}}, 422, "a training config is"),
    ({"model": "8b", "config": {"a": 1}}, 422, "give one model"),
    ({}, 422, "missing model"),
    ({"model": 8}, 422, "model: input should be a valid string"),
])
def test_bad_input_is_a_one_line_4xx(client, body, status, message):
    answer = client.post("/api/estimate", json=body)
    assert answer.status_code == status
    error = answer.json()
    assert message in error["error"] and "\n" not in error["error"] and error["exit_code"] == 2


def test_accept_unmodelled_gives_a_verdict_on_a_config_with_unmodelled_settings(client):
    kept = ('{"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 2, '
            '"generate_during_eval": false, "disable_dropout": false}')
    body = {"from_config": {"name": "orpo.json", "text": kept}, "method": "lora", "gpu": "h100-sxm5-80gb"}
    refused = client.post("/api/check", json=body)
    assert refused.status_code == 422 and "accept-unmodelled" in refused.json()["error"]
    answer = client.post("/api/check", json={**body, "accept_unmodelled": True})
    assumptions = answer.json()["estimate"]["assumptions"]
    assert answer.status_code == 200 and any("NOT MODELLED" in line for line in assumptions)


def test_bounds_on_uploads_and_bodies(client):
    big = {"from_config": {"name": "x.yaml", "text": "#" * (MAX_CONFIG_BYTES + 1)}}
    assert client.post("/api/estimate", json=big).status_code == 422
    answer = client.post("/api/estimate", content=b"{" + b" " * MAX_BODY_BYTES + b"}",
                         headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "KiB" in answer.json()["error"]
    assert client.post("/api/plan", json={"model": "8b", "tokens": "1e30"}).status_code == 422
    assert "do not apply" in client.post("/api/plan", json={"model": "8b", "options": {"gpus": 8}}).json()["error"]
    assert client.post("/api/check", json={"model": "8b", "gpu": "no-such-gpu"}).status_code == 422


def test_options_and_catalogs_come_from_the_library(client):
    from vramplan.options import RunOptions

    form = client.get("/api/options").json()
    assert [f["name"] for f in form["fields"]] == list(RunOptions.model_fields)
    batch = next(f for f in form["fields"] if f["name"] == "batch_size")
    assert (batch["kind"], batch["default"], batch["flag"]) == ("int", "1", "--batch-size")
    objective = next(f for f in form["fields"] if f["name"] == "objective")
    assert set(objective["choices"]) == {"sft", "dpo", "orpo", "kto", "grpo"}
    models = client.get("/api/catalog/models").json()
    assert models["kind"] == "models" and any(m["size_alias"] == "8b" for m in models["items"])
    gpus = client.get("/api/catalog/gpus").json()
    assert gpus["kind"] == "catalog-gpus" and any(g["id"] == "h100-sxm5-80gb" for g in gpus["items"])


def test_openapi_types_each_answer_by_its_published_schema(client):
    from vramplan.output import document_schema

    spec = client.get("/api/openapi.json").json()
    estimate = spec["paths"]["/api/estimate"]["post"]
    ref = estimate["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert schema["properties"].keys() == document_schema("estimate")["properties"].keys()
    assert "#/$defs/" not in json.dumps(spec)  # every reference resolves inside the OpenAPI document
    docs = client.get("/api/docs")
    assert docs.status_code == 200 and "/api/estimate" in docs.text and "//cdn" not in docs.text


def test_page_and_assets_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert client.get(asset).status_code == 200
    text = page.text + client.get("/static/app.js").text + client.get("/static/app.css").text
    assert "http://" not in text.replace("http://localhost", "") and "https://" not in text  # no CDN, no network


def test_vramplan_serve_starts_and_answers():
    """The command itself, as a user runs it: a process bound to localhost that answers the page and the API."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vramplan", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, health = time.monotonic() + 60, None
        while time.monotonic() < deadline and health is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as answer:
                    health = json.loads(answer.read())
            except OSError:
                time.sleep(0.2)
        assert health is not None and health["status"] == "ok", "vramplan serve did not answer"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/estimate", method="POST",
                                         data=json.dumps({"model": "8b"}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert json.loads(answer.read())["kind"] == "estimate"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert b"vramplan" in answer.read()
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=20)
    assert "serving http://localhost:" in errors  # bound to this machine: the default --host


def test_an_uploaded_config_opens_no_file_it_names(client, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"client_secret": "TOPSECRET-123", "r": 8}')
    adapter = json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 1,
                          "bf16": True, "adapter_config": str(secret)})
    answer = client.post("/api/check", json={"from_config": {"name": "a.json", "text": adapter}, "gpu": "rtx-4090"})
    assert answer.status_code == 422 and "cannot name another file" in answer.json()["error"]
    assert "TOPSECRET" not in answer.text
    trl = json.dumps({"model_name_or_path": "meta-llama/Llama-3.1-8B", "per_device_train_batch_size": 1,
                      "bf16": True, "deepspeed": str(secret)})
    answer = client.post("/api/estimate", json={"from_config": {"name": "t.json", "text": trl}, "method": "lora"})
    assert answer.status_code == 200 and "TOPSECRET" not in answer.text
    assert "DeepSpeed config not opened (an uploaded config names no file the page reads" in answer.text


def test_no_temporary_path_in_an_answer(client):
    config = json.loads(open(TINY).read())
    for route, extra in (("/api/estimate", {}), ("/api/check", {"gpu": "rtx-4090"}), ("/api/plan", {})):
        answer = client.post(route, json={"config": config, "method": "full", **extra})
        assert answer.status_code == 200 and "vramplan-web-" not in answer.text, route
    axolotl = "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nmicro_batch_size: 2\n"
    answer = client.post("/api/check", json={"from_config": {"name": "mine.yaml", "text": axolotl}, "gpu": "4GB"})
    assert answer.status_code == 200 and "vramplan-web-" not in answer.text


def test_suggested_commands_carry_the_command_s_own_settings(client):
    check = client.post("/api/check", json={"model": "70b", "gpu": "rtx-4090", "headroom": 0.3}).json()
    assert all("--gpu rtx-4090" in line and "--headroom 0.3" in line for line in check["commands"])
    plan = client.post("/api/plan", json={"model": "405b", "method": "full", "options": {"seq_len": 131072},
                                          "tokens": "2B", "epochs": 3}).json()
    assert plan["suggestions"] and all("--tokens 2B --epochs 3" in s["command"] for s in plan["suggestions"])


def test_hostile_requests_are_refused(client):
    big_chunks = (b" " * 65536 for _ in range(40))  # 2.5 MiB, chunked: no Content-Length
    answer = client.post("/api/estimate", content=big_chunks, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and "KiB" in answer.json()["error"]
    rebound = client.get("/api/health", headers={"host": "attacker.example"})
    assert rebound.status_code == 400  # DNS rebinding: a page elsewhere cannot use the localhost API
    laughs = "a: &a [" + ",".join(['"' + "x" * 2000 + '"'] * 10) + "]\n"
    for level in "bcdefg":
        laughs += f"{level}: &{level} [" + ",".join([f"*{chr(ord(level) - 1)}"] * 10) + "]\n"
    laughs += "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\n"
    answer = client.post("/api/estimate", json={"from_config": {"name": "x.yaml", "text": laughs}})
    assert answer.status_code == 422 and "YAML aliases" in answer.json()["error"] and len(answer.content) < 2000
    nested = b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    answer = client.post("/api/estimate", content=nested, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500 and "error" in answer.json()


def test_catalogs_and_plan_defaults_are_the_cli_s(client, capsys):
    import inspect

    from vramplan.cli.plan import plan_command
    from vramplan.hardware.plan import CostAssumptions

    main(["catalog", "gpus", "--format", "json"])
    assert client.get("/api/catalog/gpus").text == capsys.readouterr().out
    defaults = inspect.signature(plan_command).parameters
    fields = CostAssumptions.model_fields
    for flag, field in (("amortise_years", "amortisation_years"), ("kwh_price", "energy_usd_per_kwh"),
                        ("busy_share", "busy_share"), ("max_nodes", "max_nodes")):
        assert defaults[flag].default == fields[field].default, flag  # the page's plan is the CLI's
