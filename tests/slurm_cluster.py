"""A real single-node SLURM cluster for tests: Debian's munged, slurmctld and slurmd.

Brought up in a private folder (config, state, logs), torn down by the PIDs it started. No
cgroups, no accounting database: jobs are tracked with squeue/scontrol. Needs root (slurmd runs
jobs as their owner) and the slurm-wlm and munge packages.

By hand: `python tests/slurm_cluster.py DIR` starts one and prints the SLURM_CONF to export;
Ctrl-C tears it down.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def missing() -> str:
    """Why a cluster cannot be brought up here, or '' when it can."""
    if os.geteuid() != 0:
        return "a test SLURM cluster needs root (slurmd runs jobs as their owner)"
    absent = [
        name
        for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "setpriv")
        if not shutil.which(name) and not Path("/usr/sbin", name).exists()
    ]
    if absent:
        return f"SLURM test cluster needs {', '.join(absent)} (apt install slurm-wlm munge)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster:
    """One controller and one compute node named after this host, on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]  # must equal `hostname -s`
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment for sbatch/squeue/scontrol and the bidsapp commands that call them."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        probe = subprocess.run(
            [_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True
        ).stdout
        fields = dict(item.split("=", 1) for item in probe.split() if "=" in item)
        cpus, memory = fields.get("CPUs", "1"), int(fields.get("RealMemory", "1024"))
        r = self.root
        self.conf.write_text(
            f"""ClusterName=bidsapptest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/logs/slurmctld.log
SlurmdLogFile={r}/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=10
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory - 512} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _munge_up(self) -> bool:
        try:
            token = subprocess.run(["munge", "-n"], capture_output=True, check=True, timeout=5)
            subprocess.run(["unmunge"], input=token.stdout, capture_output=True, check=True)
        except (OSError, subprocess.SubprocessError):
            return False
        return True

    def _start(self, argv: list[str], log: str) -> None:
        out = (self.root / "logs" / log).open("ab")
        self.procs.append(
            subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def start(self, timeout: float = 60) -> None:
        """Start the daemons (munged only when none answers) and wait for the node to be idle."""
        self._write_conf()
        if not self._munge_up():
            Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            self._start(
                [
                    "setpriv",
                    "--reuid=munge",
                    "--regid=munge",
                    "--init-groups",
                    _sbin("munged"),
                    "--foreground",
                ],
                "munged.out",
            )
            self._wait(self._munge_up, 15, "munged")
        self._start([_sbin("slurmctld"), "-D", "-f", str(self.conf)], "slurmctld.out")
        self._wait(lambda: self._scontrol("ping").returncode == 0, timeout, "slurmctld")
        self._start([_sbin("slurmd"), "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait(self._node_idle, timeout, "slurmd")

    def _scontrol(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["scontrol", *args], capture_output=True, text=True, env=self.env, check=False
        )

    def _node_idle(self) -> bool:
        out = self._scontrol("show", "node", self.node).stdout
        return "State=IDLE" in out

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(ready) and ready():
                return
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited ({proc.returncode}): {self.logs()}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout:.0f} s: {self.logs()}")

    def logs(self) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for log in sorted((self.root / "logs").glob("*")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def squeue(self) -> list[str]:
        """Every job id still pending or running."""
        queue = subprocess.run(
            ["squeue", "--noheader", "--format=%i"],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
        )
        return queue.stdout.split()

    def wait_jobs(self, job_ids: list[str], timeout: float = 300) -> dict[str, list[str]]:
        """Wait until every job (and array task) has left the queue; id → each task's state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = subprocess.run(
                ["squeue", "--noheader", "--format=%i", "--jobs", ",".join(job_ids)],
                capture_output=True,
                text=True,
                env=self.env,
                check=False,
            )
            if queue.returncode == 0 and not queue.stdout.strip():
                break
            time.sleep(1)
        else:
            raise TimeoutError(f"jobs {job_ids} still queued after {timeout:.0f} s")
        return {
            job: [
                w.split("=", 1)[1]
                for w in self._scontrol("show", "job", job).stdout.split()
                if w.startswith("JobState=")
            ]
            for job in job_ids
        }

    def stop(self) -> None:
        """Terminate what this cluster started, by PID (slurmd first), then SIGKILL stragglers."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


if __name__ == "__main__":
    cluster = SlurmCluster(Path(sys.argv[1]).absolute())
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
