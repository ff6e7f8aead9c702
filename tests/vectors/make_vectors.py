# ruff: noqa: UP031  (payloads with JSON braces read better with %-formatting)
"""Writes the shared wire-contract vectors (docs/protocol.md). Run from this folder: python make_vectors.py

The expected results are written here by hand from the contract, never taken from the decoder.
A vector's ``metric_types`` (optional) is the ``[metric_types]`` declaration the gateway decodes it with;
a metric it does not declare is a float.
"""

import json

T = 1764072000123
RX = 1764072100000
TOP = "edgekit/site-a/dev-1/readings"
ST = "edgekit/site-a/dev-1/status"


def rd(b, s, t, q, m):
    return {"site": "site-a", "device": "dev-1", "boot": b, "seq": s, "t": t, "q": q, "m": m}


def enc(obj):
    return json.dumps(obj, separators=(",", ":"))


V = []


def add(fname, name, payload, expect, topic=TOP, encode=False, hexp=None, types=None):
    d = {"name": name, "topic": topic, "received_ms": RX}
    if types:
        d["metric_types"] = types
    if hexp is not None:
        d["payload_hex"] = hexp
    else:
        d["payload"] = payload
    if encode:
        d["encode"] = True
    d["expect"] = expect
    V.append((fname, d))


add(
    "valid_single",
    "one synced reading",
    enc({"v": 1, "dev": "dev-1", "r": [{"b": 17, "s": 120, "t": T, "q": "s", "m": {"temp_c": 21.5, "rh": 40.1}}]}),
    {
        "kind": "readings",
        "readings": [rd(17, 120, T, "s", {"temp_c": 21.5, "rh": 40.1})],
        "rejected": [],
        "flushed": None,
    },
    encode=True,
)
add(
    "valid_batch_flushed",
    "three readings of mixed types and a flushed marker",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 17, "s": 121, "t": T + 60000, "q": "s", "m": {"temp_c": 21.6, "rh": 40.0}},
                {"b": 17, "s": 122, "t": T + 120000, "q": "c", "m": {"door": "open", "vib": 3}},
                {"b": 17, "s": 123, "t": T + 180000, "q": "u", "m": {"ok": True, "adc": -12}},
            ],
            "flushed": T + 180000,
        }
    ),
    {
        "kind": "readings",
        "readings": [
            rd(17, 121, T + 60000, "s", {"temp_c": 21.6, "rh": 40.0}),
            rd(17, 122, T + 120000, "c", {"door": "open", "vib": 3}),
            rd(17, 123, T + 180000, "u", {"ok": True, "adc": -12}),
        ],
        "rejected": [],
        "flushed": T + 180000,
    },
    encode=True,
    types={"integer": ["vib", "adc"], "boolean": ["ok"], "string": ["door"]},
)
add(
    "valid_flush_marker_only",
    "a pure flushed marker with no readings",
    enc({"v": 1, "dev": "dev-1", "r": [], "flushed": T}),
    {"kind": "readings", "readings": [], "rejected": [], "flushed": T},
    encode=True,
)
add(
    "valid_flushed_before_2020",
    "a flushed marker before 2020, negative too, is a marker the gateway ignores: the readings are taken",
    enc({"v": 1, "dev": "dev-1", "r": [{"b": 1, "s": 0, "t": T, "q": "s", "m": {"temp_c": 20.5}}], "flushed": -5}),
    {"kind": "readings", "readings": [rd(1, 0, T, "s", {"temp_c": 20.5})], "rejected": [], "flushed": -5},
)
add(
    "valid_spaces_and_key_order",
    "whitespace and another key order are accepted",
    '{ "r": [ {"m": {"temp_c": 20.25}, "q": "s", "t": %d, "s": 0, "b": 0} ], "dev": "dev-1", "v": 1 }' % T,
    {"kind": "readings", "readings": [rd(0, 0, T, "s", {"temp_c": 20.25})], "rejected": [], "flushed": None},
)
add(
    "reading_nan",
    "NaN in one reading rejects only that reading",
    '{"v":1,"dev":"dev-1","r":[{"b":1,"s":0,"t":%d,"q":"s","m":{"temp_c":NaN}},{"b":1,"s":1,"t":%d,"q":"s","m":{"temp_c":20.5}}]}'
    % (T, T + 1000),
    {
        "kind": "readings",
        "readings": [rd(1, 1, T + 1000, "s", {"temp_c": 20.5})],
        "rejected": [{"index": 0, "reason": "non_finite"}],
        "flushed": None,
    },
)
add(
    "reading_infinity",
    "Infinity and 1e400 are non-finite",
    '{"v":1,"dev":"dev-1","r":[{"b":1,"s":0,"t":%d,"q":"s","m":{"a":-Infinity}},{"b":1,"s":1,"t":%d,"q":"s","m":{"a":1e400}},{"b":1,"s":2,"t":%d,"q":"s","m":{"a":1e300}}]}'
    % (T, T, T),
    {
        "kind": "readings",
        "readings": [rd(1, 2, T, "s", {"a": 1e300})],
        "rejected": [{"index": 0, "reason": "non_finite"}, {"index": 1, "reason": "non_finite"}],
        "flushed": None,
    },
)
add(
    "reading_time_too_old",
    "a reading stamped 2000-01-01 (an unset ESP32 RTC) is rejected alone",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 2, "s": 0, "t": 946684800000, "q": "u", "m": {"x": 1}},
                {"b": 2, "s": 1, "t": T, "q": "s", "m": {"x": 2}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [rd(2, 1, T, "s", {"x": 2.0})],
        "rejected": [{"index": 0, "reason": "time_too_old"}],
        "flushed": None,
    },
)
add(
    "reading_time_in_future",
    "a reading more than 5 minutes ahead of the gateway is rejected",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 2, "s": 5, "t": RX + 300001, "q": "s", "m": {"x": 1}},
                {"b": 2, "s": 6, "t": RX + 300000, "q": "s", "m": {"x": 2}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [rd(2, 6, RX + 300000, "s", {"x": 2.0})],
        "rejected": [{"index": 0, "reason": "time_in_future"}],
        "flushed": None,
    },
)
add(
    "reading_bad_types",
    "wrong types inside readings are schema errors for those readings only",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": "1", "s": 0, "t": T, "q": "s", "m": {"x": 1}},
                {"b": 1, "s": 1.5, "t": T, "q": "s", "m": {"x": 1}},
                {"b": 1, "s": 2, "t": float(T), "q": "s", "m": {"x": 1}},
                {"b": 1, "s": 3, "t": T, "q": "x", "m": {"x": 1}},
                {"b": 1, "s": 4, "t": T, "q": "s", "m": {}},
                {"b": 1, "s": 5, "t": T, "q": "s", "m": {"x": [1]}},
                {"b": 1, "s": 6, "t": T, "q": "s", "m": {"Bad-Name": 1}},
                {"b": 1, "s": 7, "t": T, "q": "s", "m": {"seq": 1}},
                {"b": -1, "s": 8, "t": T, "q": "s", "m": {"x": 1}},
                {"b": 1, "s": 9, "t": T, "q": "s", "m": {"x": 2**64}},
                {"b": 1, "s": 10, "t": T, "q": "s", "m": {"y": "y" * 65}},
                [1, 10, T, "s", {"x": 1}],
                {"b": 1, "s": 12, "t": T, "q": "s", "m": {"x": None}},
                {"b": 1, "s": 13, "t": T, "q": "s", "m": {"x": True, "y": "ok"}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [rd(1, 13, T, "s", {"x": True, "y": "ok"})],
        "rejected": [{"index": i, "reason": "schema"} for i in range(13)],
        "flushed": None,
    },
    types={"boolean": ["x"], "string": ["y"]},
)
add(
    "reading_types",
    "each metric is a float unless declared otherwise; a value of another kind is a type_mismatch",
    # an integer is a float if it has an exact float (2**53 has, 2**53 + 1 has not); a whole float is an
    # integer (21.0, -0.0), if it fits in 64 bits
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 3, "s": 0, "t": T, "q": "s", "m": {"temp_c": 21, "big": 2**53, "n": 21.0, "z": -0.0}},
                {"b": 3, "s": 1, "t": T, "q": "s", "m": {"temp_c": "21.5"}},
                {"b": 3, "s": 2, "t": T, "q": "s", "m": {"temp_c": True}},
                {"b": 3, "s": 3, "t": T, "q": "s", "m": {"big": 2**53 + 1}},
                {"b": 3, "s": 4, "t": T, "q": "s", "m": {"n": 21.5}},
                {"b": 3, "s": 5, "t": T, "q": "s", "m": {"n": -0.5}},
                {"b": 3, "s": 6, "t": T, "q": "s", "m": {"ok": 1}},
                {"b": 3, "s": 7, "t": T, "q": "s", "m": {"label": 5}},
                {"b": 3, "s": 8, "t": T, "q": "s", "m": {"n": "21"}},
                {"b": 3, "s": 9, "t": T, "q": "s", "m": {"ok": False, "label": "", "n": -7}},
                {"b": 3, "s": 10, "t": T, "q": "s", "m": {"n": 1e300}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [
            rd(3, 0, T, "s", {"temp_c": 21.0, "big": 9007199254740992.0, "n": 21, "z": 0}),
            rd(3, 9, T, "s", {"ok": False, "label": "", "n": -7}),
        ],
        "rejected": [{"index": i, "reason": "schema" if i == 10 else "type_mismatch"} for i in range(1, 11) if i != 9],
        "flushed": None,
    },
    types={"integer": ["n", "z"], "boolean": ["ok"], "string": ["label"]},
)
add(
    "reading_strings",
    "strings are stored exactly, but a lone surrogate or a control character is a bad_string",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 4, "s": 0, "t": T, "q": "s", "m": {"note": 'a "quoted" \\ back\\slash'}},
                {"b": 4, "s": 1, "t": T, "q": "s", "m": {"note": "\ud800"}},
                {"b": 4, "s": 2, "t": T, "q": "s", "m": {"note": "lone \udfff low half"}},
                {"b": 4, "s": 3, "t": T, "q": "s", "m": {"note": "new\nline"}},
                {"b": 4, "s": 4, "t": T, "q": "s", "m": {"note": "tab\t"}},
                {"b": 4, "s": 5, "t": T, "q": "s", "m": {"note": "\x00"}},
                {"b": 4, "s": 6, "t": T, "q": "s", "m": {"note": "del\x7f"}},
                {"b": 4, "s": 7, "t": T, "q": "s", "m": {"note": "c1\x85"}},
                {"b": 4, "s": 8, "t": T, "q": "s", "m": {"note": "é 漢字 😀 \u2028 \ufeff \U0010ffff"}},
                {"b": 4, "s": 9, "t": T, "q": "s", "m": {"temp_c": "\ud800"}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [
            rd(4, 0, T, "s", {"note": 'a "quoted" \\ back\\slash'}),
            rd(4, 8, T, "s", {"note": "é 漢字 😀 \u2028 \ufeff \U0010ffff"}),
        ],
        "rejected": [{"index": i, "reason": "bad_string"} for i in (1, 2, 3, 4, 5, 6, 7, 9)],
        "flushed": None,
    },
    types={"string": ["note"]},
)
add(
    "reading_reserved_names",
    "a metric may not be named like a field or tag of the reading measurement, nor time",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "r": [
                {"b": 5, "s": 0, "t": T, "q": "s", "m": {"time": 1.0}},
                {"b": 5, "s": 1, "t": T, "q": "s", "m": {"site": 1.0}},
                {"b": 5, "s": 2, "t": T, "q": "s", "m": {"device": 1.0}},
                {"b": 5, "s": 3, "t": T, "q": "s", "m": {"boot": 1.0}},
                {"b": 5, "s": 4, "t": T, "q": "s", "m": {"sites": 1.0}},
            ],
        }
    ),
    {
        "kind": "readings",
        "readings": [rd(5, 4, T, "s", {"sites": 1.0})],
        "rejected": [{"index": i, "reason": "schema"} for i in range(4)],
        "flushed": None,
    },
)
add("err_bad_json", "truncated JSON", '{"v":1,"dev":"dev-1","r":[{"b":1', {"kind": "error", "reason": "bad_json"})
add("err_not_object", "a JSON list at top level", "[1,2,3]", {"kind": "error", "reason": "schema"})
add(
    "err_bad_utf8",
    "bytes that are not UTF-8",
    None,
    {"kind": "error", "reason": "bad_utf8"},
    hexp=(b'{"v":1,"dev":"dev-1","r":[],"flushed":1,"x":"\xff\xfe"}').hex(),
)
add("err_deep_nesting", "nesting thousands deep", "[" * 4000 + "]" * 4000, {"kind": "error", "reason": "bad_json"})
add(
    "err_oversize",
    "a payload over 8192 bytes",
    enc(
        {"v": 1, "dev": "dev-1", "r": [{"b": 1, "s": 0, "t": T, "q": "s", "m": {"note": "x" * 60}}], "pad": "p" * 8200}
    ),
    {"kind": "error", "reason": "oversize"},
)
add("err_version", "protocol version 2", enc({"v": 2, "dev": "dev-1", "r": []}), {"kind": "error", "reason": "version"})
add("err_version_missing", "no version", enc({"dev": "dev-1", "r": []}), {"kind": "error", "reason": "version"})
add(
    "err_device_mismatch",
    "payload names another device",
    enc({"v": 1, "dev": "dev-2", "r": [{"b": 1, "s": 0, "t": T, "q": "s", "m": {"x": 1}}]}),
    {"kind": "error", "reason": "device_mismatch"},
)
add(
    "err_bad_topic",
    "a topic with a bad device name",
    enc({"v": 1, "dev": "dev 1", "r": []}),
    {"kind": "error", "reason": "bad_topic"},
    topic="edgekit/site-a/dev 1/readings",
)
add(
    "err_bad_topic_kind",
    "an unknown topic kind",
    enc({"v": 1, "dev": "dev-1", "r": []}),
    {"kind": "error", "reason": "bad_topic"},
    topic="edgekit/site-a/dev-1/other",
)
add(
    "err_empty_batch",
    "no readings and no flushed marker",
    enc({"v": 1, "dev": "dev-1", "r": []}),
    {"kind": "error", "reason": "schema"},
)
add(
    "err_readings_not_list",
    "r is an object",
    enc({"v": 1, "dev": "dev-1", "r": {"b": 1}}),
    {"kind": "error", "reason": "schema"},
)
add(
    "err_too_many_readings",
    "65 readings",
    enc({"v": 1, "dev": "dev-1", "r": [{"b": 1, "s": i, "t": T, "q": "s", "m": {"x": i}} for i in range(65)]}),
    {"kind": "error", "reason": "too_many_readings"},
)
add(
    "status_online",
    "retained status of an awake board",
    enc(
        {
            "v": 1,
            "dev": "dev-1",
            "state": "online",
            "boot": 17,
            "t": T,
            "clock": "s",
            "sleep_s": 300,
            "battery_mv": 3911,
            "buf": 12,
            "buf_cap": 256,
            "dropped": 0,
            "fw": "0.1.0",
        }
    ),
    {
        "kind": "status",
        "state": "online",
        "fields": {
            "boot": 17,
            "t": T,
            "clock": "s",
            "sleep_s": 300,
            "battery_mv": 3911,
            "buf": 12,
            "buf_cap": 256,
            "dropped": 0,
            "fw": "0.1.0",
        },
    },
    topic=ST,
    encode=True,
)
add(
    "status_last_will",
    "the last will",
    enc({"v": 1, "dev": "dev-1", "state": "offline"}),
    {"kind": "status", "state": "offline", "fields": {}},
    topic=ST,
    encode=True,
)
add(
    "status_types",
    "documented status fields have their documented type, others are floats unless declared",
    enc({"v": 1, "dev": "dev-1", "state": "online", "sleep_s": 300.0, "battery_mv": 3911.0, "rssi": -70, "ssid": "x"}),
    {"kind": "status", "state": "online", "fields": {"sleep_s": 300, "battery_mv": 3911, "rssi": -70.0, "ssid": "x"}},
    topic=ST,
    types={"string": ["ssid"]},
)
add(
    "status_type_mismatch",
    "a status field of the wrong kind rejects the whole status",
    enc({"v": 1, "dev": "dev-1", "state": "online", "battery_mv": "low"}),
    {"kind": "error", "reason": "type_mismatch"},
    topic=ST,
)
add(
    "status_bad_string",
    "a status string with a lone surrogate rejects the whole status",
    enc({"v": 1, "dev": "dev-1", "state": "online", "fw": "0.1\udc80"}),
    {"kind": "error", "reason": "bad_string"},
    topic=ST,
)
add(
    "status_reserved_time",
    "a status field named time (InfluxDB would drop it silently) rejects the whole status",
    enc({"v": 1, "dev": "dev-1", "state": "online", "time": 5}),
    {"kind": "error", "reason": "schema"},
    topic=ST,
)
add(
    "status_bad_state",
    "an unknown state",
    enc({"v": 1, "dev": "dev-1", "state": "napping"}),
    {"kind": "error", "reason": "schema"},
    topic=ST,
)
for fname, d in V:
    with open(fname + ".json", "w") as f:
        json.dump(d, f, indent=1, ensure_ascii=False)
        f.write("\n")
print(len(V))
