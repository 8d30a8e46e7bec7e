"""How we authenticate to Label Studio: a legacy token as `Token …`, or a personal access token refreshed to `Bearer …`.

A personal access token (PAT) is a JWT refresh token; Label Studio exchanges it at `POST /api/token/refresh/` for an
access token valid five minutes. We cache that token until shortly before it expires.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from dataclasses import dataclass

import requests

from cliplabel.core.errors import LabelStudioAuthError

logger = logging.getLogger(__name__)
_REFRESH_MARGIN_S = 30.0


def is_personal_access_token(token: str) -> bool:
    """True for a JWT (three base64url parts whose header names an algorithm); legacy tokens are plain hex."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


@dataclass
class _Cached:
    header: str
    expires_at: float


class LabelStudioAuth:
    """Builds the `Authorization` header for one Label Studio (base URL + token); safe to share between threads."""

    def __init__(self, base_url: str, token: str, session: requests.Session, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session = session
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._cached: _Cached | None = None

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioAuth(base_url={self.base_url!r})"

    def header(self) -> str:
        """The header value to send; refreshes a PAT's access token when needed.

        Raises:
            LabelStudioAuthError: the PAT refresh was refused or Label Studio did not answer.
        """
        if not is_personal_access_token(self._token):
            return f"Token {self._token}"
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now >= self._cached.expires_at:
                self._cached = self._refresh(now)
            return self._cached.header

    def _refresh(self, now: float) -> _Cached:
        try:
            resp = self._session.post(f"{self.base_url}/api/token/refresh/", json={"refresh": self._token},
                                      timeout=self._timeout_s, allow_redirects=False)
        except requests.RequestException as exc:
            raise LabelStudioAuthError(f"Label Studio did not answer the token refresh: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise LabelStudioAuthError(f"Label Studio refused the personal access token (HTTP {resp.status_code})",
                                       upstream_status=resp.status_code)
        try:
            access = resp.json()["access"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LabelStudioAuthError("Label Studio's token refresh answer has no access token") from exc
        logger.info("refreshed a Label Studio access token base_url=%s", self.base_url)
        return _Cached(header=f"Bearer {access}", expires_at=now + 300.0 - _REFRESH_MARGIN_S)
