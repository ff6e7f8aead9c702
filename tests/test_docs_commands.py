"""Every shell command in README.md and docs/*.md is run by a test, or marked as needing what a test cannot have.

The commands are the lines of the ```sh and ```bash blocks (a line ending in a backslash goes on; ``a && b`` is
two commands). Each one is, in order of preference:

- **run here**: ``edgekit-gateway check --config FILE`` on the file the docs name (or the one they copy it from),
  ``edgekit-sim scenarios``, ``cp`` of a file the repository has, a pytest command whose files exist, and a
  benchmark's ``--help`` (a benchmark runs for minutes: ``make bench``);
- **mapped** to the test that runs it (:data:`MAPPED`): the test must exist and its body must use the command's
  words (its subcommand and the option that matters);
- **marked**: a comment ``# needs hardware`` (a board, a Raspberry Pi), ``# needs root`` (it installs into the
  system: apt-get, /etc, systemctl) or ``# needs Docker`` on the line, or on a comment line above it in the block.

Every command of edgekit-gateway and edgekit-sim is also parsed by the program's own argument parser, so an
option the docs use and the program lost fails here. Every repository path a command names exists (the files
of ``/opt/edgekit/src/...`` included). Nothing slow runs: the whole module takes about a second.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from user_path import gateway

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKERS = ("needs hardware", "needs root", "needs Docker")
PROGRAMS = {"edgekit-gateway": "edgekit-gateway", "edgekit-sim": "edgekit-sim", "edgekit-fleet": "edgekit-fleet",
            "edgekit-ota": "edgekit-ota"}  # fmt: skip
MODULES = {"gateway": "edgekit-gateway", "sim": "edgekit-sim", "gateway.fleet": "edgekit-fleet",
           "gateway.ota": "edgekit-ota",
           "gateway.anomaly.evaluate": "evaluate", "pytest": "pytest"}  # fmt: skip

ALERT_CHECK = "tests/test_grafana_alerts.py::test_alert_files_are_covered_by_the_check"
MAPPED: list[tuple[str, str, tuple[str, ...]]] = [
    # (a regular expression the normalised command matches, the test that runs it, words its body must use)
    (r"^make demo\b", "tests/first_hour.py::main", ('"make"', '"demo"')),  # run by tests/test_first_hour.py
    (r"^make test\b", ".ci/run", ("make test",)),
    (r"^python scripts/dashboards\.py --check$", ALERT_CHECK, ('gen.main(["--check"])',)),
    (r"^python scripts/dashboards\.py$", ALERT_CHECK, ("gen.main([])",)),
    (r"^edgekit-ota .*publish-build", "tests/firmware/test_ota.py::test_update_two_boards_and_roll_back_a_third",
     ('"publish-build"', '"--version"', '"--firmware"', '"--device"')),
    (r"^edgekit-ota .*cmd", "tests/firmware/test_ota.py::test_cmd_sets_the_sampling_interval_and_refuses_a_bad_one",
     ('"cmd"', '"--site"', '"--device"', '"--set"')),
    (r"^edgekit-gateway check .*--probe", "tests/test_user_services.py::test_check_probe_says_the_broker_and_the_"
     "database_are_usable", ('"--probe"',)),
    (r"^edgekit-gateway compile --target flink-sql", "tests/test_flink.py::test_cli_compile_writes_the_job_and_"
     "refuses_with_exit_2", ('"compile"', '"--target"', '"flink-sql"', '"--output"')),
    (r"^edgekit-gateway run ", "tests/gateway/test_cli.py::test_run_record_top_in_tmux_then_replay",
     ('"run"', '"--stats-file"', '"--record"')),
    (r"^edgekit-gateway top ", "tests/gateway/test_cli.py::test_run_record_top_in_tmux_then_replay",
     ("top", "--stats-file")),
    (r"^edgekit-gateway replay ", "tests/gateway/test_cli.py::test_run_record_top_in_tmux_then_replay",
     ('"replay"',)),
    (r"^edgekit-gateway plan ", "tests/gateway/test_cli.py::test_plan_measures_points_per_hour_and_state",
     ('"plan"', '"--devices"', '"--interval"')),
    (r"^edgekit-gateway plan .*--scenario", "tests/sim/test_latency.py::test_plan_with_a_scenario_prints_the_trade_"
     "off_table", ('"plan"', '"--scenario"', '"--bound"', '"--lateness"')),
    (r"^edgekit-gateway reload ", "tests/gateway/test_reload_e2e.py::test_a_reload_under_load_loses_nothing_and_"
     "keeps_unchanged_windows", ('"reload"', '"--config"')),
    (r"^edgekit-gateway recover ", "tests/reliability/test_damaged_state.py::test_recovered_state_is_replayed_into_"
     "influxdb", ('"recover"',)),
    (r"^edgekit-sim run .*--broker", "tests/sim/test_sim_cli.py::test_run_publishes_to_a_real_broker",
     ('"run"', '"--broker"', '"--truth"', '"--duplicates"', '"--malformed"')),
    (r"^edgekit-sim simulate .*--in-process", "tests/sim/test_scenarios.py::test_cli_simulate_in_process_writes_"
     "truth_and_report", ('"simulate"', '"--in-process"', '"--truth"', '"--report"')),
    (r"^edgekit-sim simulate .*--measure", "tests/sim/test_latency.py::test_simulate_measure_keeps_the_measurement_"
     "in_the_truth_and_the_report_draws_it", ('"simulate"', '"--measure"', '"--trigger"', '"--report"')),
    (r"^edgekit-sim simulate .*--broker", "tests/test_user_services.py::test_simulate_to_a_broker_in_real_time_"
     "shows_its_progress", ('"simulate"', '"--broker"', '"--truth"')),
    (r"^edgekit-sim verify ", "tests/sim/test_scenarios_e2e.py::test_scenario_through_broker_gateway_and_influxdb",
     ('"verify"', '"--truth"', '"--influx-url"', '"--database"')),
    (r"^edgekit-sim report ", "tests/sim/test_scenarios.py::test_cli_simulate_in_process_writes_truth_and_report",
     ('"report"', '"--truth"', '"--out"')),
    (r"^edgekit-fleet (.* )?(add|list)( |$)", "tests/gateway/test_fleet_tool.py::test_move_changes_the_site_and_prints_"
     "what_the_gateway_needs", ('"add"', '"--site"')),
    (r"^edgekit-fleet (.* )?move ", "tests/gateway/test_fleet_tool.py::test_move_changes_the_site_and_prints_what_the_"
     "gateway_needs", ('"move"', '"--site"')),
    (r"^edgekit-fleet (.* )?credentials", "tests/reliability/test_security.py::locked", ('"credentials"', '"--out"')),
    (r"^edgekit-fleet (.* )?credentials .*--broker-dir", "tests/gateway/test_fleet_tool.py::test_credentials_write_"
     "private_files_and_print_no_secret", ('"credentials"', '"--broker-dir"')),
    (r"^edgekit-fleet (.* )?password ", "tests/gateway/test_fleet_tool.py::test_credentials_write_private_files_and_"
     "print_no_secret", ('"password"',)),
    (r"^edgekit-fleet (.* )?init ", "tests/firmware/test_fleet_path.py::field", ('"init"', '"--broker"')),
    (r"^edgekit-fleet (.* )?wifi ", "tests/firmware/test_fleet_path.py::field", ('"wifi"', '"--ssid"')),
    (r"^(\.venv/bin/)?python scripts/deploy\.py --install-help", "tests/gateway/test_fleet_tool.py::test_deploy_"
     "builds_from_the_fleet_and_tells_how_to_install_micropython", ('"--install-help"',)),
    (r"^(\.venv/bin/)?python scripts/deploy\.py .*--identify", "tests/firmware/test_fleet_path.py::test_redeploy_"
     "source_compiled_source_runs_exactly_the_last_build", ('"--identify"',)),
    (r"^(\.venv/bin/)?python scripts/deploy\.py .*--device", "tests/firmware/test_fleet_path.py::deploy",
     ('"--port"', '"--device"', '"--compile"')),
    (r"^evaluate( |$)", "tests/gateway/anomaly/test_anomaly_evaluate.py::test_default_settings_reach_f1_0_9_for_"
     "spikes_and_level_shifts", ("main(",)),
    (r"^evaluate nab ", "tests/gateway/anomaly/test_anomaly_evaluate.py::test_nab_layout_scores_like_the_series_it_"
     "came_from", ('"nab"',)),
    (r"^evaluate export-nab ", "tests/gateway/anomaly/test_anomaly_evaluate.py::test_nab_fixture_is_what_the_"
     "exporter_writes", ('"export-nab"',)),
    (r"^sh scripts/typecheck_firmware\.sh", "tests/firmware/test_typecheck.py", ("typecheck_firmware.sh",)),
    (r"^scripts/make_certs\.sh", "tests/reliability/test_security.py::locked", ("make_certs.sh",)),
    (r"^pip install ", "scripts/setup.sh", ("pip install",)),
]  # fmt: skip


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    marked: bool

    @property
    def text(self) -> str:
        return " ".join(self.argv)


def _blocks(path: Path) -> list[tuple[int, list[str]]]:
    out: list[tuple[int, list[str]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    inside, start, body = False, 0, []
    for i, line in enumerate(lines, 1):
        if line.startswith("```"):
            if not inside:
                inside, start, body, lang = True, i, [], line[3:].strip()
            else:
                inside = False
                if lang in ("sh", "bash"):
                    out.append((start, body))
        elif inside:
            body.append(line)
    return out


def _normal(argv: list[str]) -> list[str]:
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):  # VAR=value before the command
        argv = argv[1:]
    argv = [a.strip("[]") for a in argv if a.strip("[]")]
    if not argv:
        return argv
    name = Path(argv[0]).name
    if name in PROGRAMS:
        return [PROGRAMS[name], *argv[1:]]
    if re.fullmatch(r"python3?", name) and len(argv) > 2 and argv[1] == "-m" and argv[2] in MODULES:
        return [MODULES[argv[2]], *argv[3:]]
    return argv


def commands() -> list[Command]:
    found: list[Command] = []
    for path in DOCS:
        for start, body in _blocks(path):
            block_marked = False
            joined: list[tuple[int, str]] = []
            for k, line in enumerate(body):
                if joined and joined[-1][1].endswith("\\"):
                    joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
                else:
                    joined.append((start + 1 + k, line))
            for number, line in joined:
                if not line.strip():
                    continue
                marked = any(f"# {m}" in line or f"({m})" in line for m in MARKERS)
                if line.lstrip().startswith("#"):
                    block_marked = block_marked or marked
                    continue
                words = shlex.split(line, comments=True)
                part: list[str] = []
                for w in [*words, "&&"]:
                    if w in ("&&", ";"):
                        argv = _normal(part)
                        if argv:
                            found.append(Command(f"{path.name}:{number}", tuple(argv), marked or block_marked))
                        part = []
                    else:
                        part.append(w)
    return found


ALL = commands()


def _test_body(target: str) -> str:
    path, _, name = target.partition("::")
    text = (REPO / path).read_text(encoding="utf-8")
    if not name:
        return text
    m = re.search(rf"^(?:async )?def {re.escape(name)}\(.*?(?=^(?:@|def |async def |class )|\Z)", text, re.M | re.S)
    assert m, f"{target}: no such test"
    return m[0]


def _run_here(c: Command, copies: dict[str, str]) -> str | None:
    """Run the command if it is one of the cheap ones; its failure message, '' when it passed, None when it is
    not one of them."""
    a = c.argv
    if a[0] == "sudo" and a[1:2] == ("install",) and not a[-2].startswith("-"):  # a file put in place (marked)
        copies[a[-1]] = a[-2].removeprefix("/opt/edgekit/src/")
        return None
    if a[0] == "cp" and len(a) == 3 and (REPO / a[1]).is_file():
        copies[a[2]] = a[1]
        return ""
    if a[:2] == ("edgekit-gateway", "check") and "--probe" not in a:
        cfg = a[a.index("--config") + 1]
        source = copies.get(cfg, cfg)
        if not (REPO / source).is_file():
            return f"{c.where}: {c.text}: names {cfg}, which the repository does not have"
        done = gateway("check", "--config", str(REPO / source))
        return "" if done.returncode == 0 else f"{c.where}: {c.text}: exit {done.returncode}: {done.stderr}"
    if a[:2] == ("edgekit-sim", "scenarios"):
        from sim.cli import main

        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(["scenarios"])
        ok = code == 0 and "flaky-network" in out.getvalue()
        return "" if ok else f"{c.where}: {c.text}: exit {code}"
    if re.fullmatch(r"python3?", a[0]) and len(a) > 1 and a[1].startswith("bench/"):
        # a benchmark runs for minutes and prints numbers (``make bench``): here, its --help form
        done = subprocess.run([sys.executable, a[1], "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
        return "" if done.returncode == 0 else f"{c.where}: {a[1]} --help: exit {done.returncode}: {done.stderr}"
    if a[0] == "pytest":
        paths = [p for p in a[1:] if p.startswith("tests/")]
        missing = [p for p in paths if not (REPO / p).exists()]
        return f"{c.where}: {c.text}: no {missing}" if missing or not paths else ""
    return None


def test_every_command_is_run_mapped_or_marked() -> None:
    assert len(ALL) > 40, len(ALL)  # the extraction finds the commands (it read every block)
    problems: list[str] = []
    copies: dict[str, str] = {}
    counts = {"run": 0, "mapped": 0, "marked": 0}
    for c in ALL:
        result = _run_here(c, copies)
        if result is not None:
            counts["run"] += 1
            if result:
                problems.append(result)
            continue
        hits = [(target, words) for pattern, target, words in MAPPED if re.search(pattern, c.text)]
        if hits:
            counts["mapped"] += 1
            target, words = hits[-1]
            body = _test_body(target)
            problems += [f"{c.where}: {c.text}: {target} does not use {w}" for w in words if w not in body]
            continue
        if c.marked:
            counts["marked"] += 1
            continue
        problems.append(f"{c.where}: {c.text}: neither run by a test nor marked ({', '.join(MARKERS)})")
    print(f"docs commands: {counts}")
    assert problems == [], "\n".join(problems)


def test_every_mapping_is_used() -> None:
    """A mapping no command needs any more is stale."""
    unused = [pattern for pattern, _, _ in MAPPED if not any(re.search(pattern, c.text) for c in ALL)]
    assert unused == [], unused


@pytest.mark.parametrize("program", ["edgekit-gateway", "edgekit-sim", "edgekit-ota"])
def test_the_programs_take_every_option_the_docs_give_them(program: str) -> None:
    from gateway.cli import build_parser as gateway_parser
    from gateway.ota import build_parser as ota_parser
    from sim.cli import build_parser as sim_parser

    parsers = {"edgekit-gateway": gateway_parser, "edgekit-sim": sim_parser, "edgekit-ota": ota_parser}
    parser = parsers[program]()
    used = [c for c in ALL if c.argv[0] == program]
    assert used
    for c in used:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                parser.parse_args(list(c.argv[1:]))
            except SystemExit as exc:
                raise AssertionError(f"{c.where}: {c.text}: {err.getvalue().strip()}") from exc


def test_every_repository_path_a_command_names_exists() -> None:
    top = ("gateway/", "deploy/", "sim/", "scripts/", "tests/", "docs/", "dashboards/", "bench/", "firmware/")
    missing = []
    for c in ALL:
        for word in c.argv[1:]:
            for token in re.split(r"[=:]", word):
                path = token.removeprefix("/opt/edgekit/src/")
                if path.startswith(top) and "<" not in path and not (REPO / path.rstrip("/")).exists():
                    missing.append(f"{c.where}: {path}")
    assert missing == []


def test_one_example_configuration_per_use_each_passing_check_as_shipped() -> None:
    """The README names each example configuration with its use, and each passes `check` as shipped (the Docker
    one with the environment docker-compose.yml gives it)."""
    from test_deploy import model

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shipped = {
        "gateway/examples/gateway.toml": {},
        "gateway/examples/bridge.toml": {},
        "gateway/examples/sink-only.toml": {},
        "deploy/systemd/gateway.toml": {},
        "deploy/gateway.toml": {k: v for k, v in model()["services"]["gateway"]["environment"].items() if v},
    }
    found = {str(p.relative_to(REPO)) for d in ("gateway/examples", "deploy") for p in (REPO / d).rglob("*.toml")}
    assert found == set(shipped), found
    for path, env in shipped.items():
        assert f"`{path}`" in readme, path
        done = gateway("check", "--config", str(REPO / path), env=env)
        assert done.returncode == 0, (path, done.stderr)
