"""A newcomer's configuration path, as typed (issue 21): environment overrides, `check`, the example files.

Each test runs ``edgekit-gateway`` (``python -m gateway``) as a separate process, with the environment a user
would have set, and checks what it prints and its exit code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from user_path import gateway

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
