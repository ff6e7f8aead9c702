"""The log formatters remove every form of every configured secret from each line, whatever carried it."""

from __future__ import annotations

import base64
import json
import logging
import warnings
from typing import Any
from urllib.parse import quote

import pytest
import yarl

from gateway.config import parse_config, secret_values
from gateway.logs import setup_logging

PW = 'pw"\\é€-Zk9madeUpPass:/@'  # quote, backslash, latin-1 and non-latin-1 characters: escaped forms differ
TOK = "tok-Zk9madeUpToken"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_form_of_a_secret_reaches_a_log_line(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"EDGEKIT_INFLUX_PASSWORD": PW, "EDGEKIT_MQTT_PASSWORD": PW + "m", "EDGEKIT_INFLUX_TOKEN": TOK}
    cfg = parse_config({"influx": {"username": "gw"}, "mqtt": {"username": "gw"}}, env=env)
    setup_logging("DEBUG", fmt, secret_values(cfg))
    try:
        log = logging.getLogger("gateway.test")
        basic = base64.b64encode(f"gw:{PW}".encode()).decode()
        log.info("connecting with %s", PW, extra={"headers": {"Authorization": f"Basic {basic}"}, "t": TOK})
        url = yarl.URL.build(scheme="http", user="gw", password=PW, host="db")  # as aiohttp shows a URL
        log.warning("url %s", url, extra={"nested": [{"x": repr(PW)}], "quoted": quote(PW, safe="")})
        try:
            raise RuntimeError(f"auth failed for {PW!r} token={TOK}")
        except RuntimeError:
            log.exception("write failed")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"unclosed session {TOK}", ResourceWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert err.count("***") >= 7, err
    forms: list[Any] = [PW, TOK, basic, json.dumps(PW)[1:-1], repr(PW)[1:-1], "Zk9madeUp"]
    for form in forms:
        assert form not in err, (form, err)
    if fmt == "json":
        assert all(json.loads(line) for line in err.splitlines() if line.startswith("{"))
