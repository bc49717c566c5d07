"""The HTTP API describes itself completely: every route in OpenAPI with its request and
response schemas, every reference resolvable, and docs/server.md naming every route and
setting. (Built in process: the served document is checked by the e2e tests.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conveyor import Conveyor, Settings, commands
from conveyor.plugins.http.api import build_api
from conveyor.plugins.http.routes import CommandRoute

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()


def document() -> dict[str, Any]:
    return build_api(Conveyor("sqlite:///:memory:", plugin_autoload=False)).openapi()


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_every_operation_has_request_and_response_schemas() -> None:
    doc = document()
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert len(operations) >= 18
    for path, method, op in operations:
        success = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert success, (method, path)
        for response in success.values():
            media = "text/plain" if "metrics" in path else "application/json"
            assert response["content"][media]["schema"], (method, path)
        assert "422" not in op["responses"], (method, path)  # our errors are 400 envelopes
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
        takes_body = method == "post" and not path.endswith(("/cancel", "/pause", "/resume"))
        if takes_body:
            assert op["requestBody"]["content"]["application/json"]["schema"], (method, path)
    pull = doc["paths"]["/api/v1/queues/{queue}/jobs"]["get"]
    assert {p["name"] for p in pull["parameters"]} == {"queue", "count", "wait_ms", "worker_id"}
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    assert "priority" in schemas["JobOptions"]["properties"]


def test_every_route_is_a_command_route_running_a_known_command() -> None:
    api = build_api(Conveyor("sqlite:///:memory:", plugin_autoload=False))
    routes = [r for r in api.routes if isinstance(r, CommandRoute)]
    assert len(routes) >= 19
    source = (Path(__file__).resolve().parents[2] / "plugins" / "http" / "routes.py").read_text()
    used = set(re.findall(r'_run\(request, "(\w+)"', source))
    assert used == set(commands.COMMANDS), set(commands.COMMANDS) ^ used


def test_docs_name_every_route_and_setting() -> None:
    for path in document()["paths"]:
        shown = path.removeprefix("/api/v1").replace("{job_id}", "{id}")
        assert f"`{shown}" in DOCS or shown in DOCS, f"docs/server.md does not list {path}"
    for name in Settings.model_fields:
        assert f"`{name}`" in DOCS, f"docs/server.md does not list the setting {name}"


def test_the_http_client_has_a_route_for_every_command() -> None:
    from conveyor.client._http import _route

    params = {"queue": "q", "id": "00000000-0000-7000-8000-000000000000", "flow_id": "f", "name": "s"}
    for name in commands.COMMANDS:
        method, path, _, _ = _route(name, dict(params))  # raises ValueError for a missing one
        assert method in ("GET", "POST", "DELETE") and path.startswith("/"), name
