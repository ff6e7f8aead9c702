"""A standalone Apache Flink cluster on loopback, from the apache-flink wheels in .venv (scripts/setup.sh): one
JobManager and TaskManagers as separate processes, checkpoints in a local directory; and the SQL runner that
submits a compiled job (scripts/flink/SqlRunner.java). Used by tests/test_flink.py and bench/bench_flink.py.
Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import services

SCRIPTS = Path(__file__).resolve().parent
FLINK_HOME = (
    Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "pyflink"
)
INSTALL = "run scripts/setup.sh (it installs the apache-flink wheels into .venv)"


class FlinkMissing(RuntimeError):
    """No Flink distribution or no JDK here; the message says what to install."""


@dataclass
class Cluster:
    home: Path
    conf: Path
    rest_port: int
    runner: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def rest(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as resp:
            return json.load(resp)

    def env(self) -> dict[str, str]:
        return {**os.environ, "FLINK_CONF_DIR": str(self.conf), "FLINK_LOG_DIR": str(self.conf.parent / "log")}

    def start(self, name: str, script: str) -> None:
        log = (self.conf.parent / "log" / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen(
            [str(self.home / "bin" / script), "start-foreground"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )

    def close(self) -> None:
        """Stop every process of the cluster (SIGTERM to each one's process group)."""
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def wait_taskmanagers(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.rest("/overview")["taskmanagers"]
                if seen == n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the Flink cluster has {seen} TaskManagers, not {n}; logs in {self.conf.parent / 'log'}")

    def flink(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.home / "bin" / "flink"), *args], capture_output=True, text=True, env=self.env(), timeout=300
        )

    def run_sql(self, script: Path, wait: bool = True) -> list[str]:
        """Submit the script; with ``wait``, wait for its jobs to end. Returns the job ids."""
        proc = subprocess.run(
            [str(self.home / "bin" / "flink"), "run", "-m", self.address, str(self.runner), str(script)]
            + (["--wait"] if wait else []),
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=300,
        )
        ids = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("JOB ")]
        assert proc.returncode == 0 and ids, (
            f"flink run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
        return ids

    def wait_running(self, jid: str, timeout_s: float = 120) -> None:
        """Until the job and every one of its tasks run."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.rest(f"/jobs/{jid}")
            if job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"]):
                return
            assert job["state"] not in ("FAILED", "CANCELED", "FINISHED"), f"job {jid} is {job['state']}"
            time.sleep(0.3)
        raise AssertionError(f"job {jid} not running after {timeout_s} s: {self.rest(f'/jobs/{jid}')['state']}")

    def source_records(self, jid: str) -> int:
        """Records the job's source has emitted since its (last) start."""
        job = self.rest(f"/jobs/{jid}")
        vid = job["vertices"][0]["id"]
        names = [m["id"] for m in self.rest(f"/jobs/{jid}/vertices/{vid}/metrics")]
        metric = next(n for n in names if n.startswith("0.Source__") and n.endswith(".numRecordsOut"))
        name = metric.split(".", 1)[1]
        got = self.rest(f"/jobs/{jid}/vertices/{vid}/subtasks/metrics?get={name}&agg=sum")
        return int(float(got[0]["sum"])) if got else 0

    def checkpoints(self, jid: str) -> int:
        return int(self.rest(f"/jobs/{jid}/checkpoints")["counts"]["completed"])

    def checkpoint_ids(self, jid: str) -> tuple[int, int]:
        """The id of the job's latest completed checkpoint and the largest id triggered (0: none)."""
        got = self.rest(f"/jobs/{jid}/checkpoints")
        completed = (got.get("latest") or {}).get("completed") or {}
        return int(completed.get("id", 0)), max([int(h["id"]) for h in got.get("history", [])], default=0)

    def taskmanager_of(self, jid: str) -> str:
        """The name (in :attr:`procs`) of a TaskManager that runs a task of the job: found by its resource id,
        which the JobManager reports and the TaskManager writes into its own log."""
        vid = self.rest(f"/jobs/{jid}")["vertices"][0]["id"]
        tm_id = self.rest(f"/jobs/{jid}/vertices/{vid}/taskmanagers")["taskmanagers"][0]["taskmanager-id"]
        log = self.conf.parent / "log"
        for name in self.procs:
            if name != "jobmanager" and tm_id in (log / f"{name}.out").read_text(errors="replace"):
                return name
        raise AssertionError(f"no TaskManager of this cluster has the resource id {tm_id}")

    def restarts(self, jid: str) -> int:
        """How often the job restarted (the JobManager's ``numRestarts`` metric)."""
        got = self.rest(f"/jobs/{jid}/metrics?get=numRestarts")
        return int(float(got[0]["value"])) if got else 0

    def stop(self, jids: list[str], savepoints: Path) -> None:
        """Stop the jobs with a final savepoint after draining: every window fires (rule E), the sinks commit."""
        body = json.dumps({"drain": True, "targetDirectory": f"file://{savepoints}"}).encode()
        for jid in jids:
            req = urllib.request.Request(f"http://{self.address}/jobs/{jid}/stop", data=body, method="POST")
            req.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 202, resp.read()
        deadline = time.monotonic() + 90
        for jid in jids:
            while (state := self.rest(f"/jobs/{jid}")["state"]) != "FINISHED":
                assert state not in ("FAILED", "CANCELED"), f"job {jid} is {state} after stop"
                assert time.monotonic() < deadline, f"job {jid} did not finish after stop"
                time.sleep(0.3)


def _config_yaml(tmp: Path, rpc_port: int, rest_port: int, slots: int) -> str:
    return f"""\
jobmanager:
  bind-host: 127.0.0.1
  rpc: {{address: 127.0.0.1, port: {rpc_port}}}
  memory: {{process: {{size: 768m}}}}
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: {slots}
  memory: {{process: {{size: 1024m}}, managed: {{size: 64m}}}}
parallelism: {{default: 1}}
cluster: {{evenly-spread-out-slots: true}}
rest: {{address: 127.0.0.1, bind-address: 127.0.0.1, port: {rest_port}}}
blob: {{server: {{port: 0}}}}
execution:
  checkpointing: {{dir: "file://{tmp / "checkpoints"}", interval: 1s}}
restart-strategy: {{type: fixed-delay, fixed-delay: {{attempts: 5, delay: 1s}}}}
heartbeat: {{interval: 1000, timeout: 5000}}
metrics: {{fetcher: {{update-interval: 500}}}}
env:
  java:
    opts:
      all: --add-opens=java.base/java.lang=ALL-UNNAMED
        --add-opens=java.base/java.util=ALL-UNNAMED
        --add-opens=java.base/java.nio=ALL-UNNAMED
        --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens=java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens=java.base/java.io=ALL-UNNAMED
        --add-opens=java.base/java.net=ALL-UNNAMED
        --add-opens=java.base/java.time=ALL-UNNAMED
        --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
        --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED
        --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED
        --add-opens=java.base/java.text=ALL-UNNAMED
"""


def start_cluster(tmp: Path, slots: int = 3, taskmanagers: int = 2) -> Cluster:
    """Start a JobManager and ``taskmanagers`` TaskManagers of ``slots`` slots under ``tmp``; :meth:`Cluster.close`
    stops them."""
    if not (FLINK_HOME / "bin" / "jobmanager.sh").is_file() or not (FLINK_HOME / "lib").is_dir():
        raise FlinkMissing(f"no Flink distribution at {FLINK_HOME}: {INSTALL}")
    for tool in ("java", "javac", "jar"):
        if shutil.which(tool) is None:
            raise FlinkMissing(f"{tool} not found: install a JDK 17 (apt-get install openjdk-17-jdk-headless)")
    conf = tmp / "conf"
    conf.mkdir(parents=True)
    (tmp / "log").mkdir()
    for f in (FLINK_HOME / "conf").iterdir():
        if f.name != "config.yaml":
            shutil.copy(f, conf / f.name)
    rpc_port, rest_port = services.free_ports(2)
    (conf / "config.yaml").write_text(_config_yaml(tmp, rpc_port, rest_port, slots))
    classes = tmp / "runner"
    classes.mkdir()
    subprocess.run(
        ["javac", "-cp", str(FLINK_HOME / "lib" / "*"), "-d", str(classes), str(SCRIPTS / "flink" / "SqlRunner.java")],
        check=True,
    )
    runner = tmp / "sqlrunner.jar"
    subprocess.run(["jar", "cfe", str(runner), "SqlRunner", "-C", str(classes), "SqlRunner.class"], check=True)
    cluster = Cluster(FLINK_HOME, conf, rest_port, runner)
    cluster.start("jobmanager", "jobmanager.sh")
    for i in range(taskmanagers):
        cluster.start(f"taskmanager-{i + 1}", "taskmanager.sh")
    try:
        cluster.wait_taskmanagers(taskmanagers)
    except BaseException:
        cluster.close()
        raise
    return cluster
