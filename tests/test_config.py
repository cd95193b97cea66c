"""Config loading: defaults < file < environment < overrides, and clear errors per field."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrpc.config import ClientConfig, CombinerConfig, ControllerConfig, load_config
from fedgrpc.errors import ConfigError, InvalidArgument


def test_defaults_are_valid() -> None:
    controller = load_config(ControllerConfig, environ={})
    assert controller.port == 12080
    assert controller.mongo_uri is None
    assert load_config(CombinerConfig, environ={}).port == 0
    assert load_config(ClientConfig, environ={}).tags == ()


def test_config_is_frozen_and_keyword_only() -> None:
    config = ControllerConfig(port=1)
    with pytest.raises(AttributeError):
        config.port = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        ControllerConfig("127.0.0.1")  # type: ignore[call-arg, arg-type]


def test_yaml_file_with_role_sections(tmp_path: Path) -> None:
    path = tmp_path / "fedgrpc.yaml"
    path.write_text(
        "controller:\n  port: 9000\n  data-dir: /tmp/x\ncombiner:\n  max_clients: 7\n",
        encoding="utf-8",
    )
    assert load_config(ControllerConfig, path=path, environ={}).data_dir == Path("/tmp/x")
    assert load_config(CombinerConfig, path=path, environ={}).max_clients == 7


def test_toml_flat_file(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('name = "site-a"\ntags = ["gpu", "eu"]\nheartbeat_interval = 2.5\n')
    config = load_config(ClientConfig, path=path, environ={})
    assert (config.name, config.tags, config.heartbeat_interval) == ("site-a", ("gpu", "eu"), 2.5)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 9000\nlog_level: DEBUG\nmongo_uri: mongodb://db:27017\n")
    env = {"FEDGRPC_CONTROLLER_PORT": "9100", "FEDGRPC_CONTROLLER_MONGO_URI": ""}
    config = load_config(
        ControllerConfig, path=path, environ=env, overrides={"log_level": "WARNING", "host": None}
    )
    assert config.port == 9100
    assert config.mongo_uri is None  # an empty env value clears an optional field
    assert config.log_level == "WARNING"
    assert config.host == "127.0.0.1"  # a None override means "not given"


@pytest.mark.parametrize(
    ("env", "field", "reason"),
    [
        ({"FEDGRPC_CONTROLLER_PORT": "http"}, "port", "expected an integer"),
        ({"FEDGRPC_CONTROLLER_PORT": "70000"}, "port", "between 0 and 65535"),
        ({"FEDGRPC_CONTROLLER_MONGO_URI": "postgres://x"}, "mongo_uri", "mongodb://"),
        ({"FEDGRPC_CONTROLLER_HEARTBEAT_TIMEOUT": "1"}, "heartbeat_timeout", "longer"),
        ({"FEDGRPC_CONTROLLER_CHUNK_SIZE": "0"}, "chunk_size", "must be > 0"),
        ({"FEDGRPC_CONTROLLER_PROT": "1"}, "FEDGRPC_CONTROLLER_PROT", "unknown setting"),
    ],
)
def test_bad_values_name_the_field(env: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ControllerConfig, environ=env)
    assert info.value.field == field
    assert reason in str(info.value)
    assert isinstance(info.value, InvalidArgument)


def test_bad_bool_and_address() -> None:
    with pytest.raises(ConfigError, match="controller"):
        load_config(CombinerConfig, environ={"FEDGRPC_COMBINER_CONTROLLER": "nohostport"})
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(ClientConfig, overrides={"colour": "blue"}, environ={})


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(ControllerConfig, path=tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("port = = 1")
    with pytest.raises(ConfigError, match="is not valid"):
        load_config(ControllerConfig, path=bad, environ={})
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(ControllerConfig, path=listed, environ={})


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="go together"):
        ControllerConfig(tls_cert=tmp_path / "c.pem")
    with pytest.raises(ConfigError, match="needs tls_ca"):
        ControllerConfig(tls_cert=tmp_path / "c", tls_key=tmp_path / "k", require_client_cert=True)
    with pytest.raises(ConfigError) as info:
        ControllerConfig(host="0.0.0.0")
    assert info.value.field == "host"
    assert "TLS" in str(info.value)
    assert ControllerConfig(host="0.0.0.0", insecure=True).host == "0.0.0.0"
    served = CombinerConfig(host="10.1.2.3", tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
    assert served.serves_tls
    assert not served.dials_tls
    assert ClientConfig(tls_ca=tmp_path / "ca.pem").dials_tls
