from __future__ import annotations

import base64

import pytest

from cliplabel.core.errors import ImageNotAllowedError, TaskDataError
from cliplabel.labelstudio.sources import (
    DataUriSource,
    HttpSource,
    LocalFileSource,
    SourceContext,
    host_allowed,
    local_relative_path,
    resolve,
)

LS = SourceContext(base_url="http://ls.local:8080", allowed_hosts=("img.example.com", "*.cdn.io", "raw.io:8443"),
                   local_files_root="/srv/files")
NO_LS = SourceContext(base_url=None)


@pytest.mark.parametrize(
    ("ref", "ctx", "expected"),
    [
        # Label Studio's relative upload path: joined to its URL, with the token
        ("/data/upload/1/a.png", LS, HttpSource("http://ls.local:8080/data/upload/1/a.png", True)),
        # local-files with a configured root: read from disk, not over HTTP
        ("/data/local-files/?d=sub/a%20b.png", LS, LocalFileSource("sub/a b.png")),
        # local-files without a root: through Label Studio
        ("/data/local-files/?d=a.png", SourceContext("http://ls.local:8080"),
         HttpSource("http://ls.local:8080/data/local-files/?d=a.png", True)),
        # Label Studio's own absolute URL gets the token; other allowed hosts do not
        ("http://ls.local:8080/data/upload/a.png", LS, HttpSource("http://ls.local:8080/data/upload/a.png", True)),
        ("https://img.example.com/a.png", LS, HttpSource("https://img.example.com/a.png", False)),
        ("https://x.cdn.io/a.png", LS, HttpSource("https://x.cdn.io/a.png", False)),
        ("https://raw.io:8443/a.png", LS, HttpSource("https://raw.io:8443/a.png", False)),
        # cloud storage goes through Label Studio's presign endpoint
        ("s3://bucket/key.png", LS, HttpSource(
            "http://ls.local:8080/tasks/7/presign/?fileuri=" + base64.urlsafe_b64encode(b"s3://bucket/key.png").decode(),
            True, trust_redirects=True)),
        ("data:image/png;base64,AAAA", NO_LS, DataUriSource("data:image/png;base64,AAAA")),
    ],
)
def test_allowed_references(ref: str, ctx: SourceContext, expected: object) -> None:
    assert resolve(ref, ctx, 7) == expected


@pytest.mark.parametrize(
    ("ref", "ctx", "error"),
    [
        # a host nobody allowed (the SSRF case)
        ("http://127.0.0.2:9999/secret", LS, ImageNotAllowedError),
        ("http://169.254.169.254/latest/meta-data", LS, ImageNotAllowedError),
        # Label Studio's host on another port or scheme is another origin
        ("http://ls.local:9090/a.png", LS, ImageNotAllowedError),
        ("https://ls.local:8080/a.png", LS, ImageNotAllowedError),
        # the wildcard does not match the bare domain, nor a look-alike
        ("https://cdn.io/a.png", LS, ImageNotAllowedError),
        ("https://evilcdn.io/a.png", LS, ImageNotAllowedError),
        ("https://raw.io/a.png", LS, ImageNotAllowedError),
        # user info in the URL
        ("http://img.example.com@127.0.0.2/a.png", LS, ImageNotAllowedError),
        # schemes we never read
        ("file:///etc/passwd", LS, ImageNotAllowedError),
        ("ftp://img.example.com/a.png", LS, ImageNotAllowedError),
        # local-files escapes
        ("/data/local-files/?d=../../etc/passwd", LS, ImageNotAllowedError),
        ("/data/local-files/?d=/etc/passwd", LS, ImageNotAllowedError),
        ("/data/local-files/?d=%2e%2e/secret", LS, ImageNotAllowedError),
        ("/data/local-files/?d=a/../../b", LS, ImageNotAllowedError),
        ("/data/local-files/?d=a%00.png", LS, ImageNotAllowedError),
        ("/data/local-files/?d=..%5csecret", LS, ImageNotAllowedError),
        # relative paths and cloud URIs without a known Label Studio
        ("/data/upload/1/a.png", NO_LS, TaskDataError),
        ("s3://bucket/key", NO_LS, TaskDataError),
        # not a URL at all
        ("just some text", LS, TaskDataError),
    ],
)
def test_refused_references(ref: str, ctx: SourceContext, error: type[Exception]) -> None:
    with pytest.raises(error):
        resolve(ref, ctx, 7)


def test_cloud_uri_needs_a_task_id() -> None:
    with pytest.raises(TaskDataError, match="task id"):
        resolve("gs://bucket/key", LS, None)


@pytest.mark.parametrize(("raw", "norm"), [("a.png", "a.png"), ("a/./b.png", "a/b.png"), ("a/x/../b.png", "a/b.png")])
def test_local_paths_normalise(raw: str, norm: str) -> None:
    assert local_relative_path(raw) == norm


@pytest.mark.parametrize(("host", "port", "ok"), [("a.cdn.io", 443, True), ("cdn.io", 443, False),
                                                  ("raw.io", 8443, True), ("raw.io", 443, False)])
def test_host_allowed(host: str, port: int, ok: bool) -> None:
    assert host_allowed(host, port, ("*.cdn.io", "raw.io:8443")) is ok
