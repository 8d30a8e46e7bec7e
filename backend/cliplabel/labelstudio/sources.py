"""Where a task's image may be read from: the URL policy, as pure functions.

A task's image reference is resolved into an `ImageSource` or refused. Only Label Studio's own host (with its token),
explicitly allowed hosts (without it), and files inside the configured local-files root are ever read; every redirect
hop goes through `check_http_url` again (see `cliplabel.labelstudio.fetch`).
"""

from __future__ import annotations

import base64
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

from cliplabel.core.errors import ImageNotAllowedError, TaskDataError

CLOUD_SCHEMES = ("s3", "gs", "gcs", "azure-blob", "azure")
LOCAL_FILES_PREFIX = "/data/local-files/"


@dataclass(frozen=True)
class SourceContext:
    """What the policy needs to know: Label Studio's base URL, the allowed hosts, the local-files root."""

    base_url: str | None
    allowed_hosts: tuple[str, ...] = ()
    local_files_root: str | None = None


@dataclass(frozen=True)
class HttpSource:
    url: str
    send_token: bool  # only to Label Studio itself
    trust_redirects: bool = False  # Label Studio's presign endpoint redirects to a signed cloud-storage URL


@dataclass(frozen=True)
class LocalFileSource:
    relative_path: str  # POSIX, normalised, inside the local-files root


@dataclass(frozen=True)
class DataUriSource:
    uri: str


ImageSource = HttpSource | LocalFileSource | DataUriSource


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def host_allowed(host: str, port: int | None, allowed: tuple[str, ...]) -> bool:
    """`host` matches an entry `name`, `name:port` or `*.domain` of the allow-list."""
    for entry in allowed:
        name, _, want_port = entry.partition(":")
        if want_port and (not want_port.isdigit() or int(want_port) != port):
            continue
        if name.startswith("*.") and (host.endswith(name[1:]) and host != name[2:]):
            return True
        if host == name:
            return True
    return False


def check_http_url(url: str, ctx: SourceContext) -> HttpSource:
    """Classifies an absolute http(s) URL: Label Studio's own (send the token), allowed, or refused.

    Raises:
        ImageNotAllowedError: the URL is not http(s) or its host is neither Label Studio's nor allowed.
    """
    try:
        scheme, host, port = _origin(url)
    except ValueError as exc:
        raise ImageNotAllowedError(f"malformed image URL: {exc}") from exc
    if scheme not in ("http", "https") or not host:
        raise ImageNotAllowedError(f"only http(s) image URLs can be fetched, not {scheme or 'this'} URL")
    if "@" in (urlsplit(url).netloc or ""):
        raise ImageNotAllowedError("image URLs with user info are not fetched")
    if ctx.base_url and _origin(ctx.base_url) == (scheme, host, port):
        return HttpSource(url=url, send_token=True)
    if host_allowed(host, port, ctx.allowed_hosts):
        return HttpSource(url=url, send_token=False)
    raise ImageNotAllowedError(f"host {host!r} is neither Label Studio's nor in CLIPLABEL_ALLOWED_HOSTS")


def local_relative_path(raw: str) -> str:
    """Normalises a local-files path and refuses any that could leave the root (lexically; see `fetch` for links).

    Raises:
        ImageNotAllowedError: absolute, empty, `..`-escaping, or holding NUL or backslashes.
    """
    path = unquote(raw)
    if not path or "\x00" in path or "\\" in path:
        raise ImageNotAllowedError("invalid local-files path")
    if path.startswith("/") or PurePosixPath(path).is_absolute():
        raise ImageNotAllowedError("absolute local-files paths are not allowed")
    norm = posixpath.normpath(path)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise ImageNotAllowedError("local-files path leaves the root")
    return norm


def resolve(ref: str, ctx: SourceContext, task_id: int | None) -> ImageSource:
    """Turns a task's image reference into a source we may read, following Label Studio's URL conventions.

    Raises:
        ImageNotAllowedError: the reference points outside what the policy allows.
        TaskDataError: the reference cannot be resolved (relative URL without a known Label Studio, unknown scheme).
    """
    if ref.startswith("data:"):
        return DataUriSource(uri=ref)
    parts = urlsplit(ref)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return check_http_url(ref, ctx)
    if scheme in CLOUD_SCHEMES:
        if not ctx.base_url:
            raise TaskDataError("a cloud-storage URI needs Label Studio's URL (from /setup or LABEL_STUDIO_URL)")
        if task_id is None:
            raise TaskDataError("a cloud-storage URI is resolved through Label Studio, which needs the task id")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return HttpSource(url=f"{ctx.base_url}/tasks/{task_id}/presign/?fileuri={fileuri}", send_token=True,
                          trust_redirects=True)
    if scheme or parts.netloc:
        raise ImageNotAllowedError(f"image references with scheme {scheme!r} are not fetched")
    if parts.path.startswith(LOCAL_FILES_PREFIX) and ctx.local_files_root:
        d = parse_qs(parts.query).get("d")
        if not d:
            raise TaskDataError("a /data/local-files/ URL without ?d=")
        return LocalFileSource(relative_path=local_relative_path(d[0]))
    if not ref.startswith("/"):
        raise TaskDataError("the image reference is neither a URL nor a Label Studio path")
    if not ctx.base_url:
        raise TaskDataError("a relative image URL needs Label Studio's URL (from /setup or LABEL_STUDIO_URL)")
    return check_http_url(urljoin(ctx.base_url + "/", ref.lstrip("/")), ctx)
