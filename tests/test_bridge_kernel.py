"""The foundation's configuration sections: every variable parses to its field, and a bad value is
a ConfigError naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.kernel.config import GroqSettings, Settings
from bridge.kernel.errors import ConfigError, GroqPolicyError


def test_audit_durability_is_read_from_its_variable():
    assert Settings.from_env({"GROQPOLICY_AUDIT_DURABILITY": "ack"}).audit_durability == "ack"
    assert Settings.from_env({}).audit_durability == "spool"


def test_a_bad_value_names_the_variable():
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"GROQPOLICY_AUDIT_DURABILITY": "never"})
    assert exc.value.message == "GROQPOLICY_AUDIT_DURABILITY='never': expected one of spool, ack"
    with pytest.raises(ConfigError, match=r"^GROQPOLICY_PORT='http': invalid literal"):
        Settings.from_env({"GROQPOLICY_PORT": "http"})
    assert isinstance(exc.value, GroqPolicyError)


def test_overrides_win_over_the_environment(tmp_path: Path):
    settings = Settings.from_env({"GROQPOLICY_STATE_DIR": "/nowhere"}, state_dir=tmp_path)
    assert settings.state_dir == tmp_path


def test_the_groq_key_never_reaches_a_log_line():
    settings = GroqSettings.from_env({"GROQ_API_KEY": "gsk_secret", "GROQPOLICY_EMULATOR_URL": "http://127.0.0.1:9"})
    assert settings.api_key == "gsk_secret" and "gsk_secret" not in repr(settings)
