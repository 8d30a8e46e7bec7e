"""Read image bytes from the sources `cliplabel.labelstudio.sources` allowed, with byte caps, timeouts and re-checked
redirects."""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from urllib.parse import unquote_to_bytes, urljoin

import requests

from cliplabel.core.errors import ImageFetchError, ImageNotAllowedError
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.auth import LabelStudioAuth
from cliplabel.labelstudio.sources import (
    DataUriSource,
    HttpSource,
    ImageSource,
    LocalFileSource,
    SourceContext,
    check_http_url,
    resolve,
)

logger = logging.getLogger(__name__)
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


class ImageFetcher:
    """Fetches image bytes; one instance per process, shared by all request threads."""

    def __init__(self, max_bytes: int, timeout_s: float, local_files_root: Path | None, pool_size: int) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.local_files_root = local_files_root.resolve() if local_files_root else None
        self.session = requests.Session()
        # Environment proxies would send task URLs somewhere we did not check.
        self.session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def fetch_task_image(self, task: object, task_id: int | None, key: str, ctx: SourceContext,
                         auth: LabelStudioAuth | None) -> bytes:
        """The bytes of the image a task's `data[key]` points at, under the source policy of `ctx`.

        Raises:
            TaskDataError: the task has no usable reference under `key`.
            ImageFetchError: the reference is refused (`ImageNotAllowedError`), unreachable, too large or broken.
        """
        return self.fetch(resolve(ls_format.task_image_ref(task, key), ctx, task_id), ctx, auth)

    def fetch(self, source: ImageSource, ctx: SourceContext, auth: LabelStudioAuth | None) -> bytes:
        """The bytes of one image.

        Raises:
            ImageFetchError: unreachable, HTTP error, too large, or not allowed (`ImageNotAllowedError`).
        """
        if isinstance(source, DataUriSource):
            return self._data_uri(source.uri)
        if isinstance(source, LocalFileSource):
            return self._local(source.relative_path)
        return self._http(source, ctx, auth)

    def _data_uri(self, uri: str) -> bytes:
        header, sep, payload = uri.partition(",")
        if not sep:
            raise ImageFetchError("malformed data: URI")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise ImageFetchError(f"the data: URI holds more than {self.max_bytes} bytes")
        try:
            data = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise ImageFetchError("malformed base64 in data: URI") from exc
        if len(data) > self.max_bytes:
            raise ImageFetchError(f"the data: URI holds more than {self.max_bytes} bytes")
        return data

    def _local(self, relative_path: str) -> bytes:
        if self.local_files_root is None:
            raise ImageNotAllowedError("no local-files root is configured (CLIPLABEL_LOCAL_FILES_ROOT)")
        # resolve() follows symlinks, so a link inside the root that points outside it is refused here.
        path = (self.local_files_root / relative_path).resolve()
        if not path.is_relative_to(self.local_files_root):
            raise ImageNotAllowedError("local-files path leaves the root")
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageFetchError(f"the file has {size} bytes; at most {self.max_bytes}")
            with path.open("rb") as fh:
                return fh.read(self.max_bytes + 1)
        except FileNotFoundError as exc:
            raise ImageFetchError("local file not found") from exc
        except (IsADirectoryError, PermissionError, OSError) as exc:
            raise ImageFetchError(f"local file unreadable: {type(exc).__name__}") from exc

    def _http(self, source: HttpSource, ctx: SourceContext, auth: LabelStudioAuth | None) -> bytes:
        url, send_token, trusted = source.url, source.send_token, source.trust_redirects
        for _hop in range(MAX_REDIRECTS + 1):
            headers = {"Accept": "image/*,*/*;q=0.5"}
            if send_token and auth is not None:
                headers["Authorization"] = auth.header()
            try:
                resp = self.session.get(url, headers=headers, timeout=self.timeout_s, stream=True,
                                        allow_redirects=False)
            except requests.RequestException as exc:
                raise ImageFetchError(f"could not reach the image host: {type(exc).__name__}") from exc
            with resp:
                if resp.is_redirect:
                    location = resp.headers.get("Location", "")
                    nxt = urljoin(url, location)
                    if trusted:
                        # Label Studio's presign endpoint vouches for its redirect: a signed URL of the project's
                        # own storage. It must still be http(s), and it gets no token.
                        if not nxt.lower().startswith(("http://", "https://")):
                            raise ImageNotAllowedError("presign redirect to a non-http(s) URL")
                        url, send_token, trusted = nxt, False, False
                    else:
                        checked = check_http_url(nxt, ctx)
                        url, send_token = checked.url, checked.send_token
                    continue
                if resp.status_code != 200:
                    raise ImageFetchError(f"the image host answered HTTP {resp.status_code}")
                return self._read_capped(resp)
        raise ImageFetchError(f"more than {MAX_REDIRECTS} redirects")

    def _read_capped(self, resp: requests.Response) -> bytes:
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise ImageFetchError(f"the image has {declared} bytes; at most {self.max_bytes}")
        buf = bytearray()
        try:
            for chunk in resp.iter_content(_CHUNK):
                buf += chunk
                if len(buf) > self.max_bytes:
                    raise ImageFetchError(f"the image has more than {self.max_bytes} bytes")
        except requests.RequestException as exc:
            raise ImageFetchError(f"the image download broke off: {type(exc).__name__}") from exc
        return bytes(buf)
