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


class TransientError(CliplabelError):
    """A dependency failed for now (no answer, a 5xx, a timeout): the work is retried later, never dropped."""

    code = "temporarily_unavailable"
    status = 503


class AnnotationNotConfirmedError(CliplabelError):
    """Label Studio does not confirm a webhook's annotation (missing, or of another task or project): the event is
    forged or stale and teaches nothing."""

    code = "annotation_not_confirmed"
    status = 422


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


class LabelStudioUnavailableError(LabelStudioError, TransientError):
    """Label Studio did not answer, or answered a server error: try again later."""

    code = "label_studio_unavailable"


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused our personal access token, or did not answer its refresh."""

    code = "label_studio_auth_failed"



class UnauthorizedError(CliplabelError):
    """The request needs HTTP basic auth and came without it."""

    code = "unauthorized"
    status = 401


class NotFoundError(CliplabelError):
    """The client asked for something that does not exist (a bulk job id)."""

    code = "not_found"
    status = 404


class ModelWarmingError(TransientError):
    """A label set's class vectors are still being computed: the client asks again after `retry_after_s`."""

    code = "model_warming"

    def __init__(self, detail: str, progress: float, retry_after_s: int) -> None:
        super().__init__(detail)
        self.progress = progress
        self.retry_after_s = retry_after_s
