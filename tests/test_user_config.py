"""A newcomer's configuration path, as typed (issue 21): environment overrides, `check`, the example files.

Each test runs ``edgekit-gateway`` (``python -m gateway``) as a separate process, with the environment a user
would have set, and checks what it prints and its exit code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from user_path import Done, gateway

REPO = Path(__file__).resolve().parent.parent


# --- defect 2: every key can be overridden as EDGEKIT_<SECTION>_<KEY>, with the file's validation ----------


def test_an_env_override_of_any_key_is_applied() -> None:
    done = gateway(
        "check",
        env={
            "EDGEKIT_INFLUX_BATCH_SIZE": "5",
            "EDGEKIT_INFLUX_FLUSH_INTERVAL_MS": "250",
            "EDGEKIT_DEVICES_MAX_DEVICES": "77",
            "EDGEKIT_STATE_DIR": "/tmp/edgekit-state-x",
            "EDGEKIT_ENGINE_WATERMARK_MODE": "global",
            "EDGEKIT_ENGINE_WATERMARK_OUT_OF_ORDERNESS": "90s",
            "EDGEKIT_METRICS_PORT": "9464",
            "EDGEKIT_ANOMALY_METRICS": "temp_c,rh",
            "EDGEKIT_METRIC_TYPES_STRING": '["door"]',
            "EDGEKIT_MQTT_CLEAN_SESSION": "true",
        },
        process=True,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "batches of 5 every 250 ms" in out
    assert "state for at most 77" in out
    assert "persistent session: False" in out
    assert "/tmp/edgekit-state-x" in out
    assert "global" in out and "90 s" in out
    assert "9464" in out
    assert "temp_c, rh" in out


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("EDGEKIT_INFLUX_BATCH_SIZE", "abc", "influx.batch_size: expected int, got 'abc'"),
        ("EDGEKIT_INFLUX_BATCH_SIZE", "0", "influx.batch_size: must be > 0, got 0"),
        ("EDGEKIT_LOG_FORMAT", "yaml", "log.format: 'yaml' is not one of json, text"),
        ("EDGEKIT_MQTT_CLEAN_SESSION", "maybe", "mqtt.clean_session: expected bool, got 'maybe'"),
    ],
)
def test_a_bad_env_value_is_refused_like_the_same_value_in_the_file(name: str, value: str, expected: str) -> None:
    done = gateway("check", env={name: value})
    assert done.returncode == 2, done.stdout
    assert expected in done.stderr and name in done.stderr, done.stderr


def test_a_string_key_takes_a_value_that_looks_like_a_number() -> None:
    done = gateway("check", env={"EDGEKIT_INFLUX_DATABASE": "2024", "EDGEKIT_MQTT_CLIENT_ID": "1234"})
    assert done.returncode == 0, done.stderr
    assert "database '2024'" in done.stdout and "as '1234'" in done.stdout


def test_an_unknown_edgekit_variable_is_refused_like_an_unknown_key() -> None:
    done = gateway("check", env={"EDGEKIT_INFLUX_BATCHSIZE": "5"})
    assert done.returncode == 2
    assert "EDGEKIT_INFLUX_BATCHSIZE" in done.stderr and "unknown" in done.stderr, done.stderr
    assert "EDGEKIT_INFLUX_BATCH_SIZE" in done.stderr  # the nearest known name


def test_the_documented_variables_for_other_purposes_are_not_configuration() -> None:
    """EDGEKIT_COMPILE (setup), EDGEKIT_ENGINE (which window engine), EDGEKIT_STATS_FILE (run and top), the
    tests' and the Docker set-up's knobs: listed in gateway.config.NOT_CONFIG and the README, never refused."""
    from gateway.config import NOT_CONFIG

    env = {"EDGEKIT_COMPILE": "0", "EDGEKIT_ENGINE": "pure", "EDGEKIT_ACCOUNTING_SEED": "3",
           "EDGEKIT_BROKER_AUTH": "anonymous", "EDGEKIT_DEMO_MQTT_PORT": "1999"}  # fmt: skip
    assert all(any(n == k or (k.endswith("*") and n.startswith(k[:-1])) for k in NOT_CONFIG) for n in env)
    done = gateway("check", env=env)
    assert done.returncode == 0, done.stderr
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in NOT_CONFIG:
        assert f"`{name}`" in readme, name


def test_every_key_of_the_schema_has_its_variable() -> None:
    """The variables come from the sections' own key sets: each key a section accepts in the file is
    reachable from the environment (secrets by their own variables)."""
    from gateway.config import ENV_KEYS, SECTION_KEYS

    reachable = {f"{path}.{key}" for path, key in ENV_KEYS.values()}
    for path, keys in SECTION_KEYS.items():
        for key in keys:
            if key in ("password", "token"):
                continue
            assert f"{path}.{key}" in reachable, (path, key)
    for name in ENV_KEYS:
        assert re.fullmatch(r"EDGEKIT_[A-Z0-9_]+", name)


# --- the outside review of the environment path: the same value is checked as in the file; no secret echoed -

SOURCES = ("docs", "tests", "scripts", "gateway", "sim", "firmware", "bench", "deploy")
DELIBERATELY_UNKNOWN = {"EDGEKIT_INFLUX_BATCHSIZE", "EDGEKIT_INFLUX"}  # a typo refused on purpose; a prefix


def test_every_edgekit_name_in_the_repository_is_a_key_or_not_configuration() -> None:
    """Every ``EDGEKIT_*`` name written anywhere (docs, tests, scripts, code, Makefile, README, Docker files) is
    a configuration key, a secret's variable or listed in NOT_CONFIG (and so in the README): a new test knob or
    script variable cannot be refused by the gateway as an unknown key."""
    from gateway.config import ENV_KEYS, NOT_CONFIG, SECRET_KEYS

    secrets = {"EDGEKIT_" + k.replace(".", "_").upper() for k in SECRET_KEYS}
    files = [p for d in SOURCES for p in (REPO / d).rglob("*") if p.is_file() and ".venv" not in p.parts]
    files += [p for p in REPO.iterdir() if p.is_file()]
    names: dict[str, str] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for name in re.findall(r"EDGEKIT_[A-Z0-9_]*[A-Z0-9]\b(?![*<{])", text):
            names.setdefault(name, str(path.relative_to(REPO)))
    assert "EDGEKIT_INFLUX_BATCH_SIZE" in names and "EDGEKIT_COMPILE" in names  # the scan sees the repository

    def known(n: str) -> bool:
        return (
            n in ENV_KEYS
            or n in secrets
            or any(n == k or (k.endswith("*") and n.startswith(k[:-1])) for k in NOT_CONFIG)
        )

    stray = {n: where for n, where in names.items() if not known(n) and n not in DELIBERATELY_UNKNOWN}
    assert not stray, f"EDGEKIT_* names that the gateway would refuse as unknown keys: {stray}"


def test_the_skab_data_variable_is_not_refused() -> None:
    done = gateway("check", env={"EDGEKIT_SKAB": "../shared/data/skab"})
    assert done.returncode == 0, done.stderr


PASSWORD = "Secr3tPassw0rd"


@pytest.mark.parametrize(
    "url",
    [
        f"http://gw:{PASSWORD}@h:8086",
        f" http://gw:{PASSWORD}@h:8086",
        f"\thttp://gw:{PASSWORD}@h:8086",
        f"http://gw:{PASSWORD}@h:8086 ",
        f"<http://gw:{PASSWORD}@h:8086>",
        f'"http://gw:{PASSWORD}@h:8086"',
        "http://gw:Secr3t@Passw0rd@h:8086",
        "http://gw:Secr3t/Passw0rd@h:8086",
        "http://gw:Secr3t#Passw0rd@h:8086",
        "http://gw:Secr3t?Passw0rd@h:8086",
        f"HTTP://gw:{PASSWORD}@h:8086",
        f"http://gw:{PASSWORD}@h:80x",
        f"http://gw:{PASSWORD}",
        f"gw:{PASSWORD}@h:8086",
    ],
)
@pytest.mark.parametrize("key", ["influx", "mqtt"])
def test_a_password_in_a_url_is_refused_and_never_shown(key: str, url: str) -> None:
    if key == "mqtt":
        url = url.replace("http", "mqtt").replace("HTTP", "MQTT").replace("8086", "1883")
    name = f"EDGEKIT_{key.upper()}_URL"
    quoted = url.strip('"')
    for where, done in (
        ("environment", gateway("check", env={name: url})),
        ("file", _check_file(f"[{key}]\nurl = {_toml_string(quoted)}\n")),
    ):
        assert done.returncode == 2, (where, done.stdout)
        out = done.stdout + done.stderr
        for fragment in ("Secr3t", "Passw0rd"):
            assert fragment not in out, (where, out)
        assert f"{key}.url" in done.stderr, (where, done.stderr)


def _toml_string(text: str) -> str:
    import json

    return json.dumps(text)


def _check_file(text: str) -> Done:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return gateway("check", "--config", f.name)
    finally:
        Path(f.name).unlink()


def test_redact_url_hides_every_part_of_a_password() -> None:
    from gateway.config import redact_url

    for url in (
        f" http://gw:{PASSWORD}@h:8086",
        f"\thttp://gw:{PASSWORD}@h:8086",
        f"<http://gw:{PASSWORD}@h:8086>",
        "http://gw:Secr3t@Passw0rd@h:8086",
        "http://gw:Secr3t/Passw0rd@h:8086",
        "http://gw:Secr3t#Passw0rd@h:8086",
        "mqtt://gw:Secr3t@Passw0rd@h",
    ):
        shown = redact_url(url)
        assert "Secr3t" not in shown and "Passw0rd" not in shown, (url, shown)
        assert "gw" in shown and "h" in shown, (url, shown)


@pytest.mark.parametrize("url", [" mqtt://gw:pw@h", "mqtt://gw:pw@h ", "\tmqtt://h:1883", "<mqtt://h:1883>"])
def test_a_url_with_spaces_or_brackets_around_it_is_refused(url: str) -> None:
    for done in (gateway("check", env={"EDGEKIT_MQTT_URL": url}), _check_file(f"[mqtt]\nurl = {_toml_string(url)}\n")):
        assert done.returncode == 2, done.stdout
        assert "mqtt.url" in done.stderr, done.stderr


@pytest.mark.parametrize("value", ["5", '""', '"x"', "[5]", "{a = 1}"])
def test_watermark_classes_of_the_wrong_kind_are_a_configuration_error(value: str) -> None:
    for done in (
        gateway("check", env={"EDGEKIT_ENGINE_WATERMARK_CLASSES": value}),
        _check_file(f"[engine.watermark]\nclasses = {value}\n"),
    ):
        assert done.returncode == 2, (value, done.stdout, done.stderr)
        assert "engine.watermark.classes" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "section", "key"),
    [
        ("EDGEKIT_ANOMALY_METRICS", "anomaly", "metrics"),
        ("EDGEKIT_DEVICES_KNOWN", "devices", "known"),
        ("EDGEKIT_MQTT_TOPICS", "mqtt", "topics"),
        ("EDGEKIT_METRIC_TYPES_STRING", "metric_types", "string"),
        ("EDGEKIT_METRIC_TYPES_INTEGER", "metric_types", "integer"),
    ],
)
def test_an_empty_value_is_checked_as_an_empty_string_in_the_file(name: str, section: str, key: str) -> None:
    in_file = _check_file(f'[{section}]\n{key} = ""\n')
    assert in_file.returncode == 2, in_file.stdout
    done = gateway("check", env={name: ""})
    assert done.returncode == 2, done.stdout
    assert name in done.stderr and f"{section}.{key}" in done.stderr, done.stderr


def test_an_empty_anomaly_metrics_does_not_widen_detection_to_every_metric() -> None:
    done = gateway("check", env={"EDGEKIT_ANOMALY_METRICS": "", "EDGEKIT_ANOMALY_BASELINE": "ewma"})
    assert done.returncode == 2 and "every numeric metric" not in done.stdout, done.stdout


def test_an_explicit_empty_list_is_an_empty_list() -> None:
    done = gateway("check", env={"EDGEKIT_MQTT_TOPICS": "[]", "EDGEKIT_METRIC_TYPES_STRING": "[]"})
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EDGEKIT_INFLUX_BATCH_SIZE", "5\n[mqtt]\nfoo = 1"),
        ("EDGEKIT_INFLUX_BATCH_SIZE", "5\nx = 1"),
        ("EDGEKIT_STATE_CHECKPOINT_INTERVAL_S", "7 # seconds"),
        ("EDGEKIT_INFLUX_BATCH_SIZE", "5,"),
        ("EDGEKIT_ENGINE_WATERMARK_MODE", '"global" # fleet'),
        ("EDGEKIT_METRIC_TYPES_STRING", '["door"] x'),
    ],
)
def test_text_after_the_value_is_refused(name: str, value: str) -> None:
    done = gateway("check", env={name: value})
    assert done.returncode == 2, done.stdout
    assert name in done.stderr, done.stderr


def test_a_quoted_value_is_that_string_for_every_key() -> None:
    done = gateway(
        "check",
        env={
            "EDGEKIT_ENGINE_WATERMARK_MODE": '"global"',
            "EDGEKIT_INFLUX_DATABASE": '"edgekit_q"',
            "EDGEKIT_MQTT_CLIENT_ID": "'gw-q'",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "database 'edgekit_q'" in done.stdout and "as 'gw-q'" in done.stdout, done.stdout
    assert "watermark: global" in done.stdout
    assert '"' not in re.search(r"database '[^']*'", done.stdout)[0]  # type: ignore[index]
    # and a quoted number is a string, refused where a number is expected, as in the file
    done = gateway("check", env={"EDGEKIT_INFLUX_BATCH_SIZE": '"5"'})
    assert done.returncode == 2 and "influx.batch_size" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("env", "about"),
    [
        ({"EDGEKIT_ANOMALY_THRESHOLD": "2"}, "anomaly.clear_threshold"),
        ({"EDGEKIT_METRIC_TYPES_STRING": "status"}, "patterns[door_left_open]"),
        ({"EDGEKIT_INFLUX_BATCH_SIZE": "200000"}, "influx.max_buffered"),
    ],
)
def test_an_error_about_another_key_names_the_variable_that_caused_it(env: dict[str, str], about: str) -> None:
    done = gateway("check", "--config", str(REPO / "gateway/examples/gateway.toml"), env=env)
    assert done.returncode == 2, done.stdout
    assert about in done.stderr and next(iter(env)) in done.stderr, done.stderr


def test_check_shows_the_effective_time_limits_and_what_the_environment_set() -> None:
    """engine.max_future and engine.min_time_ms refuse readings as the decoder's limits do: `check` shows the
    limit that holds, and every key set from the environment, with its variable."""
    done = gateway(
        "check",
        env={"EDGEKIT_ENGINE_MAX_FUTURE": "1s", "EDGEKIT_ENGINE_MIN_TIME_MS": "1700000000000",
             "EDGEKIT_INFLUX_BATCH_SIZE": "5"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "more than 1 s ahead" in out and "before 2023-11-14T22:13:20Z" in out, out
    assert "engine.max_future 1 s" in out and "engine.min_time_ms 1700000000000" in out, out
    assert "from env:  influx.batch_size = 5 (EDGEKIT_INFLUX_BATCH_SIZE)" in out, out
    assert "engine.max_future = '1s' (EDGEKIT_ENGINE_MAX_FUTURE)" in out, out
    plain = gateway("check")
    assert plain.returncode == 0 and "from env" not in plain.stdout and "more than 300 s ahead" in plain.stdout
