"""One exception hierarchy for the whole backend; `cliplabel.api` maps it to HTTP in one place.

Every `detail` is safe to show a client: it never holds a token, a request body or a traceback.
"""

from __future__ import annotations


class CliplabelError(Exception):
    """Base of every error the backend raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SettingsError(CliplabelError):
    """The environment does not describe a valid configuration (raised at start-up)."""

    code = "invalid_settings"


class InvalidRequestError(CliplabelError):
    """The client sent a request we cannot act on."""

    code = "invalid_request"
    status = 400


class LabelConfigError(InvalidRequestError):
    """The label config is not XML, or asks for nothing we can predict correctly."""

    code = "invalid_label_config"


class TaskDataError(CliplabelError):
    """One task's data is unusable (missing key, non-string value); that task gets an empty result."""

    code = "invalid_task_data"
    status = 422


class ImageFetchError(CliplabelError):
    """One task's image could not be fetched or decoded, or is not allowed; that task gets an empty result."""

    code = "image_fetch_failed"
    status = 422


class ImageNotAllowedError(ImageFetchError):
    """The image's location is outside the allowed hosts or the local-files root."""

    code = "image_not_allowed"
    status = 403


class StoreUnavailableError(CliplabelError):
    code = "store_unavailable"
    status = 503


class LabelStudioError(CliplabelError):
    """Label Studio's API failed us: no answer, an HTTP error, or an answer we cannot read.

    `upstream_status` is the HTTP status Label Studio answered (None when it did not answer, or answered something
    unreadable): callers branch on it, never on the message. `status` stays what we answer our own client.
    """

    code = "label_studio_api_error"
    status = 502

    def __init__(self, detail: str, upstream_status: int | None = None) -> None:
        super().__init__(detail)
        self.upstream_status = upstream_status


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused our personal access token, or did not answer its refresh."""

    code = "label_studio_auth_failed"



class NotFoundError(CliplabelError):
    """The client asked for something that does not exist (a bulk job id)."""

    code = "not_found"
    status = 404
