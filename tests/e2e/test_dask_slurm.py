"""Workers as SLURM jobs (issue 24, docs/scaling.md "On SLURM"): `vapm cluster slurm` as the docs show it, against a
real single-node SLURM (munged, slurmctld, slurmd) that the fixture starts on 127.0.0.1 and stops by process id.

The jobs start with `--export=NONE`, so the only thing that makes their workers acceptable to vapm is the
`vapm cluster env` line of their job script; featurize on them writes the bytes dvc.lock already records.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import copy_repo, pipeline_env, run

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
if any(shutil.which(name) is None for name in DAEMONS) or os.geteuid() != 0:
    pytest.skip("needs SLURM and munge run as root (apt-get install slurmctld slurmd slurm-client munge)",
                allow_module_level=True)

NODE = "vapm0"


@dataclass
class Slurm:
    conf: Path
    pids: dict[str, int]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str) -> str:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30).stdout


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def slurm_conf(root: Path, controller_port: int, node_port: int) -> str:
    """One node (this machine, 2+ CPUs) and one partition; daemons and job steps bound to 127.0.0.1 only
    (CommunicationParameters); no cgroups, accounting or mail."""
    user = getpass.getuser()
    return f"""ClusterName=vapm
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser={user}
SlurmdUser={user}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/slurmd-%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={max(2, os.cpu_count() or 2)} RealMemory=4000 \
State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def wait_until(what: str, ready, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"{what} not ready after {seconds} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def slurm():
    # A short folder: munge's socket path must fit a Unix socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="vapm-slurm-", dir="/tmp"))
    root.chmod(0o755)  # munged refuses a socket in a folder others cannot traverse
    for folder in ("munge", "state", f"spool/slurmd-{NODE}", "log", "run"):
        (root / folder).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, *free_ports(2)))
    cluster = Slurm(conf, {})
    socket_path, key = root / "munge" / "munge.socket", root / "munge" / "munge.key"
    subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, capture_output=True)

    def start(name: str, command: list[str]) -> None:
        log = open(root / "log" / f"{name}.out", "wb")
        cluster.pids[name] = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True).pid

    def munge_works() -> bool:
        token = subprocess.run(["munge", f"--socket={socket_path}", "-n"], capture_output=True)
        return token.returncode == 0 and subprocess.run(["unmunge", f"--socket={socket_path}"], input=token.stdout,
                                                         capture_output=True).returncode == 0

    try:
        start("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={socket_path}",
                         f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                         f"--seed-file={root}/munge/munged.seed"])
        wait_until("munged", munge_works)
        start("slurmctld", ["slurmctld", "-D", "-c", "-f", str(conf)])
        wait_until("slurmctld", lambda: "is UP" in cluster.command("scontrol", "ping"))
        start("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(conf)])
        wait_until("slurmd", lambda: cluster.command("sinfo", "-h", "-N", "-o", "%T").strip() == "idle")
        yield cluster
    finally:
        subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=cluster.env, capture_output=True)
        # A job's slurmstepd outlives slurmd: let the jobs end before the daemons go.
        deadline = time.monotonic() + 30
        while cluster.command("squeue", "-h").strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in cluster.pids:
                try:
                    os.kill(cluster.pids[name], signal.SIGTERM)
                    os.waitpid(cluster.pids[name], 0)
                except (ProcessLookupError, ChildProcessError):  # it had exited already (its log says why)
                    pass
        shutil.rmtree(root, ignore_errors=True)


def test_featurize_on_slurm_job_workers_writes_the_bytes_dvc_lock_records(slurm, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    command = [sys.executable, "-m", "vapm", "cluster", "slurm", "--jobs", "2", "--queue", "debug", "--memory", "1GiB",
               "--walltime", "00:30:00", "--host", "127.0.0.1", "--worker-host", "127.0.0.1",
               "--log-directory", str(tmp_path / "jobs")]
    cluster = subprocess.Popen(command, cwd=repo, env={**pipeline_env(repo), "SLURM_CONF": str(slurm.conf)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = cluster.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), cluster.stderr.read() if cluster.poll() is not None else ""
        proc = run(["dvc", "repro", "featurize"], repo, timeout=1200, env={"DASK_SCHEDULER_ADDRESS": address})
        assert f"ingest: hashing and decoding on the Dask cluster {address}" in proc.stdout
        featurized = proc.stdout.split("Running stage 'featurize'")[1]
        assert f"in 2 process(es) on the Dask cluster {address}" in featurized
        jobs = slurm.command("squeue", "-h", "-o", "%j %T").split("\n")
        assert sum(line == "vapm-dask RUNNING" for line in jobs) == 2, jobs
        # The same bytes as the committed pipeline's: dvc.lock unchanged.
        assert run(["git", "status", "--porcelain", "dvc.lock"], repo).stdout == "", \
            run(["git", "diff", "--", "dvc.lock"], repo).stdout[-4000:]
        scripts = list((tmp_path / "jobs").glob("*.err"))
        assert scripts, "the jobs wrote no logs where --log-directory says"
    finally:
        cluster.send_signal(signal.SIGTERM)
        _, errors = cluster.communicate(timeout=120)
    assert cluster.returncode == 0, errors
    assert "closed the cluster; its SLURM jobs are cancelled" in errors
    wait_until("the jobs' end", lambda: slurm.command("squeue", "-h").strip() == "", seconds=60)
