"""The server's route table, from its OpenAPI schema: every route of the API (methods, paths and
the parameters a client sends), and nothing a route is injected with (the server state, the
caller's token, the audit record) showing up as a parameter."""

from __future__ import annotations

from pathlib import Path

from tests.support.fakes import FakeBackend

ROUTES = {
    ("get", "/v1/health"): [],
    ("get", "/v1/metrics"): [],
    ("get", "/v1/capabilities"): [],
    ("get", "/v1/models"): [],
    ("get", "/v1/slides"): [],
    ("get", "/v1/slides/{slide_id}/thumbnail"): ["slide_id:path", "size:query"],
    ("get", "/v1/slides/{slide_id}/region"): ["slide_id:path", "level:query", "x:query", "y:query", "w:query",
                                               "h:query", "format:query"],
    ("get", "/v1/slides/{slide_id}"): ["slide_id:path"],
    ("get", "/v1/indexes"): [],
    ("get", "/v1/corpora"): [],
    ("post", "/v1/calls/{route}"): ["route:path"],
    ("post", "/v1/encode/{kind}"): ["kind:path"],
    ("get", "/v1/jobs"): [],
    ("get", "/v1/jobs/{job_id}"): ["job_id:path"],
    ("delete", "/v1/jobs/{job_id}"): ["job_id:path"],
    ("get", "/v1/jobs/{job_id}/result"): ["job_id:path"],
    ("get", "/v1/jobs/{job_id}/events"): ["job_id:path"],
}


def test_the_routers_serve_every_route_with_only_client_parameters(tmp_path: Path) -> None:
    from backend.server import ServerConfig, create_app

    app = create_app(ServerConfig(slide_roots=(tmp_path,), state_dir=tmp_path / "state"), backend=FakeBackend())
    try:
        schema = app.openapi()
    finally:
        app.state.histoclip.close()
    found = {(method, path): [f"{p['name']}:{p['in']}" for p in op.get("parameters", [])]
             for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert found == ROUTES
