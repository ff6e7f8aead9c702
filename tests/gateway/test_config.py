from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config, parse_config, redact_url, secret_values
from gateway.errors import ConfigError


def test_defaults_need_no_file() -> None:
    cfg = load_config(None, env={})
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.qos) == ("127.0.0.1", 1883, 1)
    assert cfg.mqtt.subscriptions == ("edgekit/#",)
    assert cfg.influx.target == "v1" and cfg.influx.database == "edgekit"
    assert cfg.devices.max_devices == 10_000


def test_toml_file_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(
        '[mqtt]\nurl = "mqtt://broker.local:1884"\nprefix = "farm"\n'
        '[influx]\ntarget = "v2"\nurl = "http://db:8086"\nbucket = "b"\norg = "o"\n'
    )
    env = {"EDGEKIT_MQTT_URL": "mqtt://gw@other:1999", "EDGEKIT_INFLUX_TOKEN": "tok", "EDGEKIT_MQTT_PASSWORD": "pw"}
    cfg = load_config(path, env=env)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username, cfg.mqtt.password) == ("other", 1999, "gw", "pw")
    assert cfg.mqtt.subscriptions == ("farm/#",)
    assert (cfg.influx.target, cfg.influx.token, cfg.influx.bucket) == ("v2", "tok", "b")
    assert "tok" not in repr(cfg) and "pw" not in repr(cfg)


def test_secret_from_file(tmp_path: Path) -> None:
    secret = tmp_path / "influx.pw"
    secret.write_text("s3cret\n")
    cfg = parse_config({"influx": {"username": "gw", "password_file": str(secret)}}, env={})
    assert cfg.influx.password == "s3cret"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mqtt": {"url": "http://x"}}, "mqtt.url"),
        ({"mqtt": {"url": "mqtt://u:p@x"}}, "no password in the URL"),
        ({"mqtt": {"qos": 3}}, "mqtt.qos"),
        ({"mqtt": {"qos": 0}}, "subscribes at QoS 1"),
        ({"mqtt": {"qos": 2}}, "subscribes at QoS 1"),
        ({"mqtt": {"url": "mqtt://h", "ca_file": "/ca.pem"}}, "would be plaintext"),
        ({"mqtt": {"qos": "1"}}, "mqtt.qos: expected int"),
        ({"mqtt": {"password": "x"}}, "secrets are not read from the config file"),
        ({"mqtt": {"prefix": "a/b"}}, "mqtt.prefix"),
        ({"mqtt": {"reconnect_min_s": 5, "reconnect_max_s": 1}}, "reconnect_max_s"),
        ({"mqtt": {"colour": "red"}}, "unknown key(s) colour"),
        ({"influx": {"target": "v3"}}, "influx.target: 'v3'"),
        ({"influx": {"target": "v2"}}, "influx.bucket: required"),
        ({"influx": {"token": "t"}}, "secrets are not read"),
        ({"influx": {"batch_size": 0}}, "influx.batch_size: must be > 0"),
        ({"influx": {"batch_size": 10, "max_buffered": 5}}, "max_buffered"),
        ({"influx": {"password_file": "/nonexistent/pw"}}, "cannot read"),
        ({"devices": {"allow_unknown": False}}, "needs a non-empty devices.known"),
        ({"devices": {"known": ["ok", "not ok"]}}, "not device ids"),
        ({"devices": {"max_devices": 0}}, "devices.max_devices: must be > 0, got 0"),
        ({"devices": {"max_devices": -1}}, "devices.max_devices: must be > 0, got -1"),
        ({"devices": {"max_devices": "x"}}, "devices.max_devices: expected int, got 'x'"),
        ({"devices": {"max_devices": True}}, "devices.max_devices: expected int, got True"),
        ({"devices": {"max_devices": 1, "known": ["a", "b"]}}, "devices.max_devices: 1 is below the 2 devices"),
        ({"log": {"level": "LOUD"}}, "log.level"),
        ({"nonsense": {}}, "unknown section(s) nonsense"),
    ],
)
def test_invalid_config_names_key_and_value(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, env={})
    assert message in str(info.value)


def test_max_devices_from_the_file() -> None:
    assert parse_config({"devices": {"max_devices": 2}}, env={}).devices.max_devices == 2


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml", env={})


# --- secrets never shown (issue 16, item 8) ---------------------------------------------------------------

MADE_UP = "Zk9-secret-Qw"  # made up for these tests


@pytest.mark.parametrize(
    ("doc", "env"),
    [
        ({"influx": {"url": f"http://gw:{MADE_UP}@db:8086"}}, {}),
        ({}, {"EDGEKIT_INFLUX_URL": f"http://gw:{MADE_UP}@db:8086"}),
        ({"influx": {"url": f"https://:{MADE_UP}@db"}}, {}),
        ({"influx": {"url": f"http://db:8086/?p={MADE_UP}&u=gw"}}, {}),
        ({"influx": {"url": f"http://db:8086/?token={MADE_UP}"}}, {}),
        ({"influx": {"url": f"htp://gw:{MADE_UP}@db:8086"}}, {}),  # wrong scheme too
        ({"influx": {"url": f"http://gw:{MADE_UP}@[::1"}}, {}),  # and malformed
        ({"influx": {"url": f"http://gw:{MADE_UP}@db:99999"}}, {}),
    ],
)
def test_influx_url_with_credentials_is_refused_without_showing_them(
    doc: dict[str, object], env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, env=env)
    message = str(info.value)
    assert message.startswith("influx.url: put no user, password, token or query in the URL"), message
    assert "set influx.username and EDGEKIT_INFLUX_PASSWORD" in message
    assert MADE_UP not in message and MADE_UP not in repr(info.value.__cause__ or "")


@pytest.mark.parametrize(
    "url",
    [
        f"mqtt://gw:{MADE_UP}@broker",
        f"mqt://gw:{MADE_UP}@broker",  # the scheme is wrong too: the message must still not show it
        f"mqtt://gw:{MADE_UP}@broker:70000",
        f"mqtt://gw:{MADE_UP}@[::1",
        f"gw:{MADE_UP}@broker",
        f"mqtt://broker?password={MADE_UP}",
    ],
)
def test_mqtt_url_with_a_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"url": url}}, env={})
    assert "put no password" in str(info.value) and MADE_UP not in str(info.value), str(info.value)


def test_other_url_errors_show_no_secret() -> None:
    for doc in ({"influx": {"url": "http://[::1"}}, {"mqtt": {"url": "mqtt://[::1"}}, {"mqtt": {"url": "mqtt://h:x"}}):
        with pytest.raises(ConfigError) as info:
            parse_config(doc, env={})
        assert "expected" in str(info.value)


def test_a_secret_file_with_a_second_line_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(f"{MADE_UP}\nsomething-else\n")
    with pytest.raises(ConfigError) as info:
        parse_config({"influx": {"username": "gw", "password_file": str(path)}}, env={})
    assert "contains a control character" in str(info.value) and MADE_UP not in str(info.value)


def test_redact_url() -> None:
    assert redact_url(f"http://gw:{MADE_UP}@db:8086/x") == "http://gw:***@db:8086/x"
    assert redact_url(f"htp://gw:{MADE_UP}@db") == "htp://gw:***@db"
    assert redact_url(f"gw:{MADE_UP}@db") == "gw:***@db"
    assert redact_url(f"http://db?p={MADE_UP}") == "http://db?***"
    assert redact_url("http://gw@db:8086") == "http://gw@db:8086"


def test_secret_values_cover_every_form() -> None:
    env = {
        "EDGEKIT_INFLUX_PASSWORD": 'p"w\\é€-' + MADE_UP,
        "EDGEKIT_MQTT_PASSWORD": MADE_UP + "/m",
        "EDGEKIT_INFLUX_TOKEN": "t" + MADE_UP,
    }
    cfg = parse_config({"influx": {"username": "gw"}, "mqtt": {"username": "gw"}}, env=env)
    forms = secret_values(cfg)
    pw = env["EDGEKIT_INFLUX_PASSWORD"]
    import base64
    import json
    from urllib.parse import quote

    for form in (pw, json.dumps(pw)[1:-1], quote(pw, safe=""), base64.b64encode(f"gw:{pw}".encode()).decode()):
        assert form in forms, form
    assert env["EDGEKIT_MQTT_PASSWORD"] in forms and env["EDGEKIT_INFLUX_TOKEN"] in forms
