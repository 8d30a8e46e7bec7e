"""How to reach a project's Label Studio: its URL and credentials, the image-source policy, an API client.

The settings' `LABEL_STUDIO_URL` / `LABEL_STUDIO_API_KEY` win over what a project's `/setup` sent. Image downloads
and API calls share one HTTP session and one `LabelStudioAuth` per (URL, token), so a personal access token is
refreshed once for both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cliplabel.core.domain import ProjectState
from cliplabel.core.lru import LruCache
from cliplabel.labelstudio import format as ls_format
from cliplabel.labelstudio.auth import LabelStudioAuth
from cliplabel.labelstudio.client import LabelStudioClient
from cliplabel.labelstudio.fetch import ImageFetcher
from cliplabel.labelstudio.sources import SourceContext

# One entry per Label Studio URL and token in use. Forgetting one costs a token refresh at most.
MAX_CACHED_AUTHS = 64
# Exports and task listings of large projects take longer than one image download.
MIN_API_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class LabelStudioDefaults:
    """Label Studio's URL and key from the settings; when set they win over what `/setup` sent."""

    url: str | None
    api_key: str | None
    allowed_hosts: tuple[str, ...]
    local_files_root: str | None


class LabelStudioConnections:
    """Per project: where its images may come from, how to authenticate, and an API client."""

    def __init__(self, defaults: LabelStudioDefaults, fetcher: ImageFetcher) -> None:
        self.defaults = defaults
        self.fetcher = fetcher
        self._auths: LruCache[tuple[str, str], LabelStudioAuth] = LruCache(MAX_CACHED_AUTHS)

    def source_context(self, project: ProjectState | None) -> tuple[SourceContext, LabelStudioAuth | None]:
        """The image-source policy for a project's tasks, and its credentials (None without URL and token)."""
        base_url = self.defaults.url or (project.hostname.rstrip("/") if project and project.hostname else None)
        token = self.defaults.api_key or (project.access_token if project else None)
        ctx = SourceContext(base_url=base_url, allowed_hosts=self.defaults.allowed_hosts,
                            local_files_root=self.defaults.local_files_root)
        if not base_url or not token:
            return ctx, None
        # Keyed by a digest: the cache's keys must not hold the token itself.
        key = (base_url, hashlib.sha256(token.encode()).hexdigest())
        auth = self._auths.get_or_put(key, lambda: LabelStudioAuth(base_url, token, self.fetcher.session,
                                                                   self.fetcher.timeout_s))
        return ctx, auth

    def client(self, project: ProjectState | None) -> LabelStudioClient | None:
        """An API client for the project's Label Studio, with the same URL and credentials as image downloads."""
        ctx, auth = self.source_context(project)
        if not ctx.base_url or auth is None:
            return None
        return LabelStudioClient.with_auth(auth, self.fetcher.session, max(MIN_API_TIMEOUT_S, self.fetcher.timeout_s))

    def fetch_image(self, task: object, key: str, project: ProjectState | None) -> bytes:
        """One task's image bytes, under the same policy as prediction.

        Raises:
            CliplabelError: the task's reference is unusable or refused, or the download failed.
        """
        ctx, auth = self.source_context(project)
        return self.fetcher.fetch_task_image(task, ls_format.task_id(task), key, ctx, auth)
