"""Which Label Studio a project's images and API calls go to, and with which credentials."""

from __future__ import annotations

import base64

import pytest

from cliplabel.core.domain import ProjectState
from cliplabel.core.errors import TaskDataError
from cliplabel.labelstudio.connections import LabelStudioConnections, LabelStudioDefaults
from cliplabel.labelstudio.fetch import ImageFetcher

NO_DEFAULTS = LabelStudioDefaults(url=None, api_key=None, allowed_hosts=(), local_files_root=None)
PROJECT = ProjectState(project_id="1", label_config="<View/>", hostname="http://setup.test/", access_token="tok1")


def _connections(defaults: LabelStudioDefaults = NO_DEFAULTS) -> LabelStudioConnections:
    return LabelStudioConnections(defaults, ImageFetcher(10_000, 5.0, None, pool_size=2))


def test_without_url_or_token_there_is_no_auth_and_no_client() -> None:
    conns = _connections()
    ctx, auth = conns.source_context(None)
    assert (ctx.base_url, auth, conns.client(None)) == (None, None, None)
    no_token = ProjectState(project_id="1", label_config="<View/>", hostname="http://setup.test")
    assert conns.source_context(no_token)[1] is None and conns.client(no_token) is None


def test_setup_fields_are_used_when_the_settings_name_no_label_studio() -> None:
    ctx, auth = _connections().source_context(PROJECT)
    assert ctx.base_url == "http://setup.test" and auth is not None and auth.base_url == "http://setup.test"


def test_the_settings_win_over_setup() -> None:
    defaults = LabelStudioDefaults(url="http://settings.test", api_key="tok2", allowed_hosts=("cdn.test",),
                                   local_files_root="/srv")
    ctx, auth = _connections(defaults).source_context(PROJECT)
    assert (ctx.base_url, ctx.allowed_hosts, ctx.local_files_root) == ("http://settings.test", ("cdn.test",), "/srv")
    assert auth is not None and auth.header() == "Token tok2"


def test_one_auth_per_url_and_token_shared_by_downloads_and_the_api_client() -> None:
    conns = _connections()
    _, first = conns.source_context(PROJECT)
    _, again = conns.source_context(PROJECT)
    client = conns.client(PROJECT)
    assert first is again and client is not None and client.auth is first
    other = ProjectState(project_id="1", label_config="<View/>", hostname="http://setup.test", access_token="tok3")
    assert conns.source_context(other)[1] is not first


def test_fetch_image_reads_a_task_under_the_prediction_policy() -> None:
    data = b"\x89PNG not really"
    task = {"id": 3, "data": {"image": "data:image/png;base64," + base64.b64encode(data).decode()}}
    assert _connections().fetch_image(task, "image", None) == data
    with pytest.raises(TaskDataError):
        _connections().fetch_image({"id": 3, "data": {}}, "image", None)
