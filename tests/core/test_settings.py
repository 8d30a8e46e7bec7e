from __future__ import annotations

from pathlib import Path

import pytest

from cliplabel.core.errors import SettingsError
from cliplabel.core.settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, Settings


def test_defaults_need_no_environment() -> None:
    s = Settings.from_env({})
    assert (s.model, s.pretrained, s.device, s.redis_url) == (DEFAULT_MODEL, DEFAULT_PRETRAINED, "auto", None)
    assert not s.basic_auth_enabled


def test_values_are_parsed_and_typed(tmp_path: Path) -> None:
    s = Settings.from_env({"CLIPLABEL_MODEL": "local-dir:/m", "CLIPLABEL_PRETRAINED": "", "CLIPLABEL_DEVICE": "cpu",
                           "CLIPLABEL_BATCH_SIZE": "64", "CLIPLABEL_ALLOWED_HOSTS": "Images.example.com, *.cdn.io",
                           "CLIPLABEL_DATA_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls:8080/",
                           "LABEL_STUDIO_API_KEY": "secret-token", "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p"})
    assert s.pretrained is None and s.batch_size == 64 and s.data_dir == tmp_path
    assert s.allowed_hosts == ("images.example.com", "*.cdn.io")
    assert s.label_studio_url == "http://ls:8080"
    assert s.basic_auth_enabled
    # secrets never show in the settings' repr
    assert "secret-token" not in repr(s)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CLIPLABEL_DEVICE": "tpu"}, "CLIPLABEL_DEVICE"),
        ({"CLIPLABEL_BATCH_SIZE": "many"}, "CLIPLABEL_BATCH_SIZE"),
        ({"CLIPLABEL_BATCH_SIZE": "0"}, "CLIPLABEL_BATCH_SIZE"),
        ({"LABEL_STUDIO_URL": "localhost:8080"}, "LABEL_STUDIO_URL"),
        ({"CLIPLABEL_REDIS_URL": "http://127.0.0.1:6379"}, "CLIPLABEL_REDIS_URL"),
        ({"CLIPLABEL_TEMPLATES": "/no/such/file"}, "CLIPLABEL_TEMPLATES"),
        ({"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_USER and BASIC_AUTH_PASS"),
    ],
)
def test_errors_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_an_error_does_not_echo_a_secret() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"BASIC_AUTH_PASS": "hunter2-secret"})
    assert "hunter2" not in str(info.value)


def test_box_settings_reach_the_detector(tmp_path: Path) -> None:
    from cliplabel.container import detector_config

    prompts = tmp_path / "bg.txt"
    prompts.write_text("# ours\nan empty conveyor belt.\nbare asphalt.\n")
    s = Settings.from_env({"CLIPLABEL_PROPOSAL_SIDE": "256", "CLIPLABEL_MAX_CROPS": "64", "CLIPLABEL_MAX_BOXES": "5",
                           "CLIPLABEL_BOX_CONTEXT": "false", "CLIPLABEL_SELECTIVE_SEARCH": "quality",
                           "CLIPLABEL_BACKGROUND_PROMPTS": str(prompts)})
    cfg = detector_config(s)
    assert (cfg.proposals.proposal_side, cfg.proposals.selective_search) == (256, "quality")
    assert (cfg.boxes.max_crops, cfg.boxes.max_boxes, cfg.context_factor) == (64, 5, None)
    assert cfg.background_prompts == ("an empty conveyor belt.", "bare asphalt.")
    assert detector_config(Settings.from_env({})).context_factor == 2.0


@pytest.mark.parametrize(("env", "name"), [({"CLIPLABEL_PROPOSAL_SIDE": "8"}, "CLIPLABEL_PROPOSAL_SIDE"),
                                           ({"CLIPLABEL_SELECTIVE_SEARCH": "slow"}, "CLIPLABEL_SELECTIVE_SEARCH"),
                                           ({"CLIPLABEL_BOX_CONTEXT": "maybe"}, "CLIPLABEL_BOX_CONTEXT")])
def test_box_setting_errors_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_the_readme_documents_every_variable() -> None:
    from pathlib import Path

    from cliplabel.core.settings import ENV_FIELDS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme[readme.index("## Configuration"):readme.index("## How it predicts")]
    missing = [var for var in ENV_FIELDS if f"`{var}`" not in table]
    assert not missing, f"README's Configuration table lacks {missing}"
