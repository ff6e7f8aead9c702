from __future__ import annotations

import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.fleet import Device, Fleet, FleetError, acl_text, board_files, load_fleet, main, save_fleet


def test_move_changes_the_site_and_prints_what_the_gateway_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = tmp_path / "fleet.toml"
    assert main(["--fleet", str(fleet), "add", "--site", "north", "dev-1", "dev-2"]) == 0
    capsys.readouterr()
    assert main(["--fleet", str(fleet), "move", "--site", "south", "dev-2"]) == 0
    printed = capsys.readouterr().out
    assert [(d.id, d.site) for d in load_fleet(fleet).devices] == [("dev-1", "north"), ("dev-2", "south")]
    assert "topic write edgekit/south/dev-2/readings" in acl_text(load_fleet(fleet))
    assert "user gateway\ntopic read edgekit/#" in acl_text(load_fleet(fleet))
    assert acl_text(load_fleet(fleet)).split("\n\n")[0].endswith("\ntopic write homeassistant/#")  # the gateway only
    section = printed[printed.rindex("[devices.sites]") :]
    cfg = parse_config({"devices": tomllib.loads(section)["devices"]}, env={})
    assert dict(cfg.devices.sites) == {"dev-2": "south"}


def test_move_refuses_unknown_devices_and_bad_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = tmp_path / "fleet.toml"
    main(["--fleet", str(fleet), "add", "--site", "north", "dev-1"])
    assert main(["--fleet", str(fleet), "move", "--site", "south", "dev-9"]) == 2
    assert "not in the fleet: dev-9" in capsys.readouterr().err
    assert main(["--fleet", str(fleet), "move", "--site", "no/where", "dev-1"]) == 2
    assert [d.site for d in load_fleet(fleet).devices] == ["north"]


def _secrets_in(text: str, out: Path) -> list[str]:
    return [p.name for p in (out / "passwords").iterdir() if p.read_text().strip() in text]


def test_credentials_write_private_files_and_print_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet, out, broker_dir = tmp_path / "fleet.toml", tmp_path / "out", tmp_path / "mosquitto"
    assert main(["--fleet", str(fleet), "init", "--broker", "pi.lan", "--sim-user", "sim"]) == 0
    assert main(["--fleet", str(fleet), "add", "--site", "north", "esp32-a1b2c3d4e5f6", "gh-2"]) == 0
    monkeypatch.setenv("EDGEKIT_WIFI_PASSWORD", "wifi-pw-123456")
    assert main(["--fleet", str(fleet), "wifi", "--ssid", "farm", "--out", str(out)]) == 0
    assert main(["--fleet", str(fleet), "credentials", "--out", str(out), "--broker-dir", str(broker_dir)]) == 0
    printed = capsys.readouterr().out
    files = [*out.rglob("*"), *broker_dir.iterdir()]
    assert {p.name for p in files} >= {"passwd", "acl", "gateway-devices.toml", "wifi.txt", "gateway.txt", "sim.txt"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert _secrets_in(printed + fleet.read_text(), out) == [] and "wifi-pw-123456" not in printed + fleet.read_text()
    assert (broker_dir / "acl").read_text() == (out / "acl").read_text()
    assert "user sim\ntopic write edgekit/#" in (out / "acl").read_text()
    users = [line.split(":")[0] for line in (out / "passwd").read_text().splitlines()]
    assert users == ["gateway", "sim", "esp32-a1b2c3d4e5f6", "gh-2"]
    # the gateway's device list is a valid [devices] section of its configuration
    cfg = parse_config(tomllib.loads((out / "gateway-devices.toml").read_text()), env={})
    assert set(cfg.devices.known) == {"esp32-a1b2c3d4e5f6", "gh-2"} and cfg.devices.sites["gh-2"] == "north"
    # a password is printed when asked, and only then
    assert main(["--fleet", str(fleet), "password", "gh-2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (out / "passwords" / "gh-2.txt").read_text().strip()
    # a second run keeps the passwords
    before = {p.name: p.read_text() for p in (out / "passwords").iterdir()}
    assert main(["--fleet", str(fleet), "credentials", "--out", str(out)]) == 0
    assert {p.name: p.read_text() for p in (out / "passwords").iterdir()} == before
    # a board's files: TLS by default on 8883, its own login, the Wi-Fi password; with TLS a CA is needed
    ca = tmp_path / "ca.crt"
    with pytest.raises(FleetError, match="no CA certificate"):
        board_files(load_fleet(fleet), out, "gh-2", ca)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg_b, sec_b = board_files(load_fleet(fleet), out, "gh-2", ca)
    assert (cfg_b["broker"], cfg_b["port"], cfg_b["tls"], cfg_b["site"], cfg_b["ca"]) == ("pi.lan", 8883, True,
                                                                                        "north", "ca.der")  # fmt: skip
    assert sec_b == {"mqtt_user": "gh-2", "mqtt_password": before["gh-2.txt"].strip(),
                     "wifi_password": "wifi-pw-123456"}  # fmt: skip
    assert not set(cfg_b) & {"mqtt_password", "wifi_password"}


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ('wifi_password = "x"', "is a secret"),
        ("mqtt_password = 'x'", "is a secret"),
        ("sleep_z = 3", "not a firmware setting"),
        ('sleep_s = "300"', "is not of type int"),
        ('broker = "x"', "top of the fleet file"),
    ],
)
def test_fleet_file_refuses_secrets_and_unknown_settings(tmp_path: Path, settings: str, error: str) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(f'broker = "pi"\n[settings]\n{settings}\n')
    with pytest.raises(FleetError, match=error):
        load_fleet(fleet)


@given(
    st.dictionaries(
        st.sampled_from(["sleep_s", "publish_every", "wifi_timeout_s", "ntp_host", "batt_low_mv", "maint_pin"]),
        st.integers(0, 10**6),
        max_size=4,
    ),
    st.text("abcdefghijklmnopqrstuvwxyz.-\"\\' ", max_size=12),
)
@settings(max_examples=40, deadline=None)
def test_fleet_file_round_trips(tmp_path_factory: pytest.TempPathFactory, per_board: dict[str, int], ssid: str) -> None:
    per_board = {k: (str(v) if k == "ntp_host" else v) for k, v in per_board.items()}
    path = tmp_path_factory.mktemp("rt") / "fleet.toml"
    fleet = Fleet(broker="10.0.0.2", port=8883, wifi_ssid=ssid, settings={"sleep_s": 60},
                  devices=(Device("gh-1", "north", per_board), Device("gh-2", "south")))  # fmt: skip
    save_fleet(path, fleet)
    assert load_fleet(path) == fleet


def test_deploy_builds_from_the_fleet_and_tells_how_to_install_micropython(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import deploy  # scripts/deploy.py

    assert deploy.main(["--install-help"]) == 0
    assert "esptool.py --chip esp32" in capsys.readouterr().out
    fleet, out, certs = tmp_path / "fleet.toml", tmp_path / "out", tmp_path / "certs"
    main(["--fleet", str(fleet), "init", "--broker", "10.0.0.2"])
    main(["--fleet", str(fleet), "add", "--site", "north", "gh-1"])
    main(["--fleet", str(fleet), "credentials", "--out", str(out)])
    make_certs = ["bash", str(deploy.REPO / "scripts" / "make_certs.sh"), str(certs), "pi.lan", "10.0.0.2"]
    printed = subprocess.run(make_certs, check=True, capture_output=True, text=True).stdout
    assert str(certs) in printed  # the directory it wrote, in full
    ca_before = (certs / "ca.crt").read_bytes()
    subprocess.run([*make_certs[:3], "broker.lan"], check=True, capture_output=True)
    assert (certs / "ca.crt").read_bytes() == ca_before  # the boards' CA is kept; a new server certificate
    san = subprocess.run(["openssl", "x509", "-in", str(certs / "server.crt"), "-noout", "-ext", "subjectAltName"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "DNS:broker.lan" in san and "IP Address:127.0.0.1" in san and "DNS:localhost" in san
    verify = ["openssl", "verify", "-CAfile", str(certs / "ca.crt"), str(certs / "server.crt")]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    capsys.readouterr()
    args = ["--device", "gh-1", "--fleet", str(fleet), "--out", str(out), "--certs", str(certs), "--dry-run"]
    assert deploy.main([*args, "--compile"]) == 0
    printed = capsys.readouterr().out
    assert "app.mpy" in printed and "app.py" not in printed and "ca.der" in printed and "main.py" in printed
    assert (out / "passwords" / "gh-1.txt").read_text().strip() not in printed
    build = tmp_path / "build"
    build.mkdir()
    cfg, sec = board_files(load_fleet(fleet), out, "gh-1", certs / "ca.crt")
    files = deploy.build(build, cfg, sec, certs / "ca.crt", False, None)
    assert (build / "ca.der").read_bytes() == (certs / "ca.der").read_bytes()  # what make_certs.sh wrote
    assert {f.name for f in files} >= {"app.py", "boot.py", "config_local.py", "secrets.py", "ca.der"}
