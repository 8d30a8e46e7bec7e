"""`/accept` and `/audit` on the real app: bad requests get a clear 4xx (the Label Studio side: tests/e2e/test_accept.py)."""

from __future__ import annotations


def test_accept_and_audit_refuse_bad_requests_clearly(serve, make_store, http) -> None:  # type: ignore[no-untyped-def]
    live = serve(make_store("embedded"))
    # no Label Studio URL or token, and the project never connected: a 400 that says what to set
    for method, path, kw in (("POST", "/accept", {"json": {"project": 5, "dry_run": True}}),
                             ("POST", "/accept", {"json": {"project": 5}}),
                             ("GET", "/audit", {"params": {"project": 5}}),
                             ("POST", "/audit", {"json": {"project": 5}}),
                             ("POST", "/accept/undo", {"json": {"project": 5}})):
        resp = http.request(method, f"{live.url}{path}", **kw)
        assert resp.status_code == 400 and "LABEL_STUDIO_URL" in resp.json()["detail"], (path, resp.text)
    for body in ({"project": 5, "target": 1.0}, {"project": 5, "confidence": 0.2}, {"project": 5, "chunk_size": 0},
                 {"project": 5, "everything": True}, {"dry_run": True}):
        resp = http.post(f"{live.url}/accept", json=body)
        assert resp.status_code == 422 and resp.json()["error"] == "invalid_request", body
    resp = http.post(f"{live.url}/accept/undo", json={"project": 5, "job_id": "../../etc"})
    assert resp.status_code == 422
    resp = http.get(f"{live.url}/accept/0123456789abcdef")
    assert resp.status_code == 404 and resp.json()["error"] == "not_found"
    assert http.get(f"{live.url}/audit").status_code == 422  # no project
