"""`vramplan serve`: the planner as a local web page and a JSON API (FastAPI on uvicorn).

run_body.py turns the page's JSON into the RunRequest every command sizes (bounded, catalog models or a pasted
config.json, never a server path); app.py answers with the library's own documents (vramplan/answers.py), the same
JSON `--format json` prints; openapi.py publishes their JSON Schemas in the OpenAPI document; static/ is the page.
"""
