"""The toy DAG on a real one-node SLURM cluster, submitted through profiles/slurm.

A module fixture installs Debian's slurm-wlm and munge when they are missing (as root,
with apt-get; otherwise the test is skipped, naming what is missing). It then writes a
slurm.conf for this machine under a temporary folder, starts munged, slurmctld and slurmd
from there, and stops exactly those daemons at the end, whatever the outcome.

The node has no GPU. It declares one `gpu` gres backed by /dev/null (gres.conf:
`AutoDetect=off`, `Name=gpu File=/dev/null`: slurmd drops a GPU gres that names no
file), so that SLURM allocates it to the jobs of the `gpu=1` rules, which the plugin
submits with `--gpus=1`. Their code still runs on the CPU.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAST_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"  # the fast config (tiny random models), as conftest
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILE = ROOT / "profiles" / "slurm"
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
SYSTEM_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
PARTITION = "ctrlbench"  # deliberately not the default partition: jobs must name it
N_SHARDS = 1


def load_profile() -> dict:
    import yte

    with open(PROFILE / "config.yaml", encoding="utf-8") as fh:
        return yte.process_yaml(fh, require_use_yte=True)


def gpu_rules() -> set[str]:
    """The rules of rules/*.smk that declare a `gpu` resource."""
    names = set()
    for path in (ROOT / "rules").glob("*.smk"):
        for name, body in re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)(?=^\S|\Z)", path.read_text(),
                                     flags=re.M | re.S):
            if re.search(r"^\s+gpu=", body, flags=re.M):
                names.add(name)
    return names


def test_profile_gives_every_gpu_rule_gpu_resources_that_grow_with_attempt():
    """Cheap check (no SLURM): every gpu rule is in set-resources, memory and time grow."""
    profile = load_profile()
    per_rule = profile["set-resources"]
    assert gpu_rules() and gpu_rules() <= set(per_rule), gpu_rules() - set(per_rule)
    for name in gpu_rules():
        assert per_rule[name]["cpus_per_gpu"] >= 1 and per_rule[name]["cpus_per_task"] == 0, name
    for resources in [profile["default-resources"], *per_rule.values()]:
        for key in ("mem_mb", "runtime"):
            values = [eval(str(resources[key]), {"attempt": attempt}) for attempt in (1, 2, 3)]
            assert values[0] > 0 and values == sorted(set(values)), (key, values)
    assert profile["executor"] == "slurm" and profile["retries"] >= 1


# --- the one-node cluster -------------------------------------------------------------

def missing_programs() -> list[str]:
    return [name for name in DAEMONS + CLIENTS + ("munge",) if shutil.which(name, path=SYSTEM_PATH) is None]


def install_slurm() -> str | None:
    """Install slurm-wlm and munge when missing; the reason it cannot, else None."""
    missing = missing_programs()
    if not missing:
        return None
    if shutil.which("apt-get") is None:
        return f"no apt-get to install {' '.join(PACKAGES)}; missing: {', '.join(missing)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # stale or missing package lists
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    missing = missing_programs()
    if result.returncode != 0 or missing:
        return (f"`{' '.join(install)}` failed (exit {result.returncode}); missing: {', '.join(missing)}\n"
                f"{(result.stdout + result.stderr)[-2000:]}")
    return None


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:  # all bound at once, so the ports differ
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        return f"({error})"
    return "\n".join(lines[-n:])


class OneNodeCluster:
    """munged + slurmctld + slurmd for this machine, every file under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.logs = root / "log"
        self.bin = root / "bin"
        self.daemons: dict[str, subprocess.Popen] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env = {**env, "SLURM_CONF": str(self.conf), "PATH": os.pathsep.join([str(self.bin), SYSTEM_PATH])}

    def write_config(self, real_memory_mb: int):
        for sub in ("etc", "munge", "log", "state", "spool", "bin"):
            (self.root / sub).mkdir()
            (self.root / sub).chmod(0o755)  # whatever the umask: munged checks its socket folder
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        cpus = max(os.cpu_count() or 1, 2)
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(f"""\
ClusterName=ctrlbench
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups, no accounting: runs in a container, status through squeue only.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Trust the CPUs/RealMemory below instead of draining the node when they differ from
# what slurmd detects (memory is only bookkeeping here: nothing enforces it).
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=5
GresTypes=gpu
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes={self.host} Default=NO MaxTime=INFINITE State=UP
""")
        # slurmd keeps a GPU gres only if it names a device file; none is opened here.
        (self.root / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu File=/dev/null\n")
        # The jobstep plugin drops every SLURM_* variable (SLURM_CONF too) before its srun
        # inside the job; a real cluster has /etc/slurm/slurm.conf, this one does not.
        srun = self.bin / "srun"
        srun.write_text(f"#!/bin/sh\nSLURM_CONF={self.conf} exec {shutil.which('srun', path=SYSTEM_PATH)} \"$@\"\n")
        srun.chmod(0o755)

    def start_daemon(self, name: str, *args: str):
        program = shutil.which(name, path=SYSTEM_PATH)
        out = open(self.logs / f"{name}.out", "wb")
        self.daemons[name] = subprocess.Popen([program, *args], stdout=out, stderr=subprocess.STDOUT,
                                              env=self.env, start_new_session=True, cwd=self.root)
        out.close()

    def start(self):
        munge = self.root / "munge"
        self.start_daemon("munged", "--foreground", f"--socket={self.munge_socket}",
                          f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                          f"--seed-file={munge / 'munged.seed'}", f"--log-file={self.logs / 'munged.log'}")
        self.wait_for(lambda: self.munge_socket.exists(), "munged socket", 20)
        self.start_daemon("slurmctld", "-D")
        self.wait_for(lambda: self.client("scontrol", "ping").returncode == 0, "slurmctld", 60)
        self.start_daemon("slurmd", "-D", "-N", self.host)
        self.wait_for(lambda: self.node_state() == "idle", "node idle", 60)

    def wait_for(self, ready, what: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = {name: p.returncode for name, p in self.daemons.items() if p.poll() is not None}
            if dead:
                raise AssertionError(f"daemon(s) exited {dead} waiting for {what}\n{self.diagnostics()}")
            if ready():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out ({timeout} s) waiting for {what}\n{self.diagnostics()}")

    def client(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)

    def node_state(self) -> str:
        return self.client("sinfo", "-h", "-N", "-n", self.host, "-o", "%T").stdout.strip()

    def jobs(self) -> list[dict]:
        """Every job slurmctld still knows (finished ones for MinJobAge), as field dicts."""
        out = self.client("scontrol", "--details", "show", "job", "--oneliner").stdout
        jobs = []
        for line in out.splitlines():
            if line.startswith("JobId="):
                fields = re.findall(r"([\w:/]+)=(.*?)(?= [\w:/]+=|$)", line.strip())
                jobs.append({key: value.strip() for key, value in fields})
        return jobs

    def diagnostics(self) -> str:
        parts = [f"sinfo: {self.client('sinfo', '-N', '-o', '%N %T %G %E').stdout.strip()}"
                 if "slurmctld" in self.daemons else ""]
        for name in ("munged.out", "munged.log", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"):
            if (self.logs / name).exists():
                parts.append(f"--- {name} (tail) ---\n{tail(self.logs / name, 25)}")
        return "\n".join(parts)

    def stop(self):
        """Cancel this cluster's jobs, then stop the daemons started here (by pid)."""
        ctld = self.daemons.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            ids = self.client("squeue", "-h", "-o", "%i").stdout.split()
            if ids:
                self.client("scancel", *ids)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.client("squeue", "-h", "-t", "PD,R,CG", "-o", "%i").stdout.strip():
                    time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def profile_peak_memory_mb() -> int:
    """The largest first-attempt mem_mb the profile asks for."""
    profile = load_profile()
    entries = [profile["default-resources"], *profile["set-resources"].values()]
    return max(int(eval(str(e["mem_mb"]), {"attempt": 1})) for e in entries if "mem_mb" in e)


@pytest.fixture(scope="module")  # stopped before the other test modules run
def slurm_cluster():
    if os.geteuid() != 0:
        missing = missing_programs()
        pytest.skip("SLURM not available: starting slurmd and slurmctld needs root"
                    + (f" (and so does installing {' '.join(PACKAGES)}; missing: {', '.join(missing)})"
                       if missing else ""))
    reason = install_slurm()
    if reason:
        pytest.skip(f"SLURM not available: {reason}")
    root = Path(tempfile.mkdtemp(prefix="ctrlbench-slurm-"))
    root.chmod(0o755)  # munged wants a socket directory everyone may enter
    cluster = OneNodeCluster(root)
    try:
        with open("/proc/meminfo") as fh:
            machine_mb = int(fh.readline().split()[1]) // 1024
        cluster.write_config(max(machine_mb - 1024, profile_peak_memory_mb()))
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- the runs -------------------------------------------------------------------------

def toy_config() -> dict:
    """The demo config cut down to SD with template prompts on toy CUB (as in
    test_workflow.sd_only_config): 13 jobs in 12 sbatch submissions (the two cheap
    clip_similarity jobs are grouped), 6 of them GPU jobs."""
    config = yaml.safe_load(FAST_CONFIG.read_text())
    config["datasets"] = {"cub": config["datasets"]["cub"]}
    config["methods"] = {"sd": {**config["methods"]["sd_template"], "datasets": ["cub"]}}
    config["evaluation"]["clip"]["long_text"] = ["truncate"]
    config["evaluation"]["clip"]["prompts"] = "template"  # one prompt set (the demo scores descriptions)
    for metric in ("fid", "aesthetic"):
        config["evaluation"].pop(metric)
    config.pop("report")
    config["n_shards"] = N_SHARDS
    return config


class Run:
    """One `snakemake --executor slurm --workflow-profile profiles/slurm` run."""

    def __init__(self, cluster: OneNodeCluster, workdir: Path, snakefile: Path):
        self.cluster, self.workdir = cluster, workdir
        env = {k: v for k, v in cluster.env.items() if not k.startswith("CTRLBENCH_SLURM_")}
        # The profile's site settings, as a user sets them: the partition (not the cluster's
        # default, so an unread variable fails the run) and squeue status (no accounting).
        env.update(CTRLBENCH_SLURM_PARTITION=PARTITION, CTRLBENCH_SLURM_STATUS_COMMAND="squeue")
        cmd = [str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(workdir),
               "--executor", "slurm", "--workflow-profile", str(PROFILE),
               "--slurm-init-seconds-before-status-checks", "2",  # the default 40 s suits real queues
               "--latency-wait", "5"]
        try:
            self.result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        except subprocess.TimeoutExpired as error:  # its output is bytes, whatever text= says
            self.result = subprocess.CompletedProcess(cmd, "timeout (900 s)", *(
                (out or b"").decode(errors="replace") if isinstance(out, bytes) else out or ""
                for out in (error.stdout, error.stderr)))
        self.log = self.result.stdout + self.result.stderr
        assert self.result.returncode == 0, self.diagnostics()

    def jobs(self) -> list[dict]:
        """This run's SLURM jobs (their name is the run id the plugin logs)."""
        run_id = re.search(r"SLURM run ID: (\S+)", self.log).group(1)
        return [job for job in self.cluster.jobs() if job["JobName"] == run_id]

    def diagnostics(self) -> str:
        workdir, result = self.workdir, self.result
        parts = [f"snakemake exit {result.returncode}", f"--- stdout (tail) ---\n{result.stdout[-3000:]}",
                 f"--- stderr (tail) ---\n{result.stderr[-6000:]}"]
        slurm_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for path in slurm_logs[-4:]:
            parts.append(f"--- {path.relative_to(workdir)} (tail) ---\n{tail(path, 30)}")
        rule_logs = sorted((workdir / "results" / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        for path in [p for p in rule_logs if p.stat().st_size][-3:]:
            parts.append(f"--- {path.relative_to(workdir)} (tail) ---\n{tail(path, 30)}")
        parts.append(self.cluster.diagnostics())
        return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.slurm
def test_toy_dag_runs_on_slurm_with_gpu_gres(slurm_cluster, tmp_path):
    config = toy_config()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = Run(slurm_cluster, tmp_path, ROOT / "Snakefile")

    # The workflow's outputs.
    results = tmp_path / "results"
    summary = pd.read_csv(results / "tables" / "summary.csv")
    means = summary[summary["aggregate"] == "mean"]
    assert sorted(means["paramset"]) == ["guidance_scale=5.0"] * 2 + ["guidance_scale=7.5"] * 2
    assert sorted(means["metric"]) == ["i_sim", "i_sim", "t_sim", "t_sim"]
    n_images = (config["toy"]["cub"]["n_classes"] * config["toy"]["cub"]["test_per_class"]
                * config["methods"]["sd"]["params"]["images_per_prompt"])
    for paramset in ("guidance_scale=5.0", "guidance_scale=7.5"):
        shards = sorted((results / "images" / "cub" / "sd" / paramset).glob("shard-*"))
        assert len(shards) == N_SHARDS
        assert sum(len(pd.read_csv(s / "manifest.csv")) for s in shards) == n_images
        assert sum(len(list(s.glob("*.png"))) for s in shards) == n_images

    # What SLURM ran: every job, with the profile's partition and resources.
    jobs = run.jobs()
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["Comment"].removeprefix("rule_").split("_wildcards_")[0], []).append(job)
    context = f"jobs by rule: { {r: len(j) for r, j in by_rule.items()} }\n{run.diagnostics()}"
    # Grouped cheap steps (profile `groups`, submissions named "<group>_<rules>"): the two
    # clip_similarity jobs share one sbatch; template_prompts goes as a group of one.
    grouped = {name: by_rule.pop(name) for name in ("metrics_clip_similarity", "prompts_template_prompts")
               if name in by_rule}
    assert {name: len(group) for name, group in grouped.items()} == {
        "metrics_clip_similarity": 1, "prompts_template_prompts": 1}, context
    assert not {"clip_similarity", "template_prompts"} & set(by_rule), context
    assert len(jobs) == 12, context  # 13 jobs, the two clip_similarity ones in one submission
    assert {"generate_sd", "clip_image_embeddings", "items"} <= set(by_rule), context
    assert "summary" not in by_rule and "all" not in by_rule, context  # localrules stay on the login node
    assert all(job["JobState"] == "COMPLETED" and job["Partition"] == PARTITION for job in jobs), context
    gpu = gpu_rules()
    assert sum(len(rule_jobs) for rule, rule_jobs in by_rule.items() if rule in gpu) == 6, context
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            if rule in gpu:  # asked with --gpus=1 --cpus-per-gpu=2, and given the gres
                assert job.get("TresPerJob") == "gres:gpu:1" and job.get("CpusPerTres") == "gres:gpu:2", job
                assert job["JOB_GRES"] == "gpu:1" and job["NumCPUs"] == "2", job  # the gres allocated
                assert job["MinMemoryNode"] == "16000M" and job["TimeLimit"] == "02:00:00", job
            else:
                assert "TresPerJob" not in job and "gpu" not in job.get("JOB_GRES", "") and job["NumCPUs"] == "1", job
                assert job["MinMemoryNode"] == "4000M" and job["TimeLimit"] == "00:30:00", job

    # Status came from squeue: this cluster has no accounting, so sacct cannot answer.
    assert "Falling back to 'sacct'" not in run.log
    assert slurm_cluster.client("sacct", "-j", jobs[0]["JobId"]).returncode != 0


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_job_is_retried_with_more_memory_and_time(slurm_cluster, tmp_path):
    """retries: 2 with `4000 * attempt` MB and `30 * attempt` min: a job that fails on its
    first attempt is resubmitted asking for twice as much."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("""\
rule needs_8gb:
    output: "done.txt"
    shell: "test {resources.mem_mb} -ge 8000 && echo {resources.mem_mb} {resources.runtime} > {output}"
""")
    run = Run(slurm_cluster, tmp_path, snakefile)
    assert (tmp_path / "done.txt").read_text().split() == ["8000", "60"]
    attempts = [(job["JobState"], job["MinMemoryNode"], job["TimeLimit"]) for job in run.jobs()]
    assert attempts == [("FAILED", "4000M", "00:30:00"), ("COMPLETED", "8000M", "01:00:00")], run.diagnostics()
