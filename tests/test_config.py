"""The one configuration package: every variable parsed in one place, the README's table held to it,
and no environment read anywhere else in product code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from bridge.kernel import config
from bridge.kernel.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PRODUCT = [REPO / "bridge", REPO / "controlplane"]


def _readme_variables() -> set[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def test_the_readme_lists_exactly_the_variables_the_configuration_reads():
    readme, code = _readme_variables(), config.variables()
    assert readme - code == set(), "in the README but read by no configuration section"
    assert code - readme == set(), "read by a configuration section but missing from the README's table"


def test_no_product_module_reads_the_environment_outside_the_configuration_module():
    offenders = []
    for root in PRODUCT:
        for path in root.rglob("*.py"):
            if path.parent == REPO / "bridge" / "kernel" / "config":
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                        and isinstance(node.value, ast.Name) and node.value.id == "os":
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_a_value_that_does_not_parse_names_its_variable():
    with pytest.raises(ConfigError, match=r"GROQPOLICY_PORT='eighty': invalid literal"):
        config.Settings.from_env({"GROQPOLICY_PORT": "eighty"})
    with pytest.raises(ConfigError, match=r"GROQPOLICY_AUDIT_DURABILITY='never': expected one of spool, ack"):
        config.Settings.from_env({"GROQPOLICY_AUDIT_DURABILITY": "never"})


def test_the_specific_name_wins_and_overrides_win_over_the_environment():
    env = {"NATS_URL": "nats://a:1", "GROQPOLICY_NATS_URL": "nats://b:2", "GROQPOLICY_PORT": "9000"}
    settings = config.Settings.from_env(env, port=9100)
    assert (settings.nats_url, settings.port) == ("nats://b:2", 9100)
    assert config.GatewaySettings.from_env({"NATS_URL": "nats://a:1"}).nats_url == "nats://a:1"


def test_the_agent_port_reaches_the_control_planes_default_opa_url():
    assert config.Settings.from_env({"GROQPOLICY_AGENT_PORT": "9181"}).opa_url == "http://127.0.0.1:9181"
    explicit = {"GROQPOLICY_AGENT_PORT": "9181", "GROQPOLICY_OPA_URL": "http://opa.internal:8181"}
    assert config.Settings.from_env(explicit).opa_url == "http://opa.internal:8181"


def test_secrets_never_show_in_a_sections_repr():
    groq = config.GroqSettings.from_env({"GROQ_API_KEY": "gsk_secret_value"})
    signing = config.SigningSettings.from_env({"GROQPOLICY_SIGNING_KEY": "-----BEGIN PRIVATE KEY-----x"})
    client = config.ClientSettings.from_env({"GROQPOLICY_TOKEN": "tok_secret_value_123"})
    for section in (groq, signing, client):
        assert "secret" not in repr(section) and "PRIVATE" not in repr(section)
    assert groq.api_key == "gsk_secret_value"
