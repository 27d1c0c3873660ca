"""The local-process executor: BentoML runner processes per simulated PoP on this machine.

Each replica is `bentoml serve edgeinfer.services.runner.service:Runner` in its own session, with
its assignment in the environment. Stopping sends SIGTERM to the arbiter (BentoML drains
and runs the runner's shutdown hook in each worker), then kills whatever is left of the
whole process tree: BentoML workers have their own process groups and would survive a
group kill as orphans (facts.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psutil

from edgeinfer.services.autoscaler.executor import Replica, deployment_spec, replica_spec
from edgeinfer.shared.config import ConfigError, list_items, split_share
from edgeinfer.shared.drain import drain
from edgeinfer.shared.embedded import free_port
from edgeinfer.shared.events import Deployment
from edgeinfer.shared.processes import alive
from edgeinfer.shared.topology import Pop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalExecutorConfig:
    nats_url: str
    namespace: str
    state_dir: Path
    pops: dict[str, Pop]
    gpu_share: Decimal = Decimal(1)  # of a CPU slot; a GPU's share comes with it (LocalGpu)
    stop_timeout_s: float = 30.0
    # The machine's GPUs and MIG slices: one runner process per device.
    gpus: tuple[LocalGpu, ...] = ()
    # Put before each runner's command line, e.g. ("taskset", "-c", "1") or a profiler:
    # bench/runner_instructions.py runs the runner under valgrind this way.
    command_prefix: tuple[str, ...] = ()
    # The process whose end stops the runners (they watch it): `edgeinfer up`, so that they
    # outlive an autoscaler that dies and is restarted; 0 means this process.
    supervisor_pid: int = 0
    # Per PoP, the NATS URL its runners log in with (`runner-<pop>`, shared/nats_permissions.py);
    # a PoP not listed gets `nats_url`.
    runner_nats_urls: dict[str, str] = field(default_factory=dict)
    # Where runners listen, and the host in the URL they advertise to routers: loopback on
    # one machine; in a container, all interfaces and a name the routers' containers
    # resolve (compose.yaml: the autoscaler's service name).
    bind_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"


class NoFreeDevice(RuntimeError):
    """Every GPU of the deployment's class on this machine already runs a replica."""


@dataclass(frozen=True)
class LocalGpu:
    """A device the local executor hands to one runner at a time."""

    gpu_class: str
    device: str  # what CUDA_VISIBLE_DEVICES names: a CUDA index, or a MIG slice's UUID
    share: Decimal = Decimal(1)


# A whole GPU by index, or a MIG slice by the UUID `nvidia-smi -L` prints for it
# ("MIG-<uuid>", or the older "MIG-GPU-<uuid>/<gi>/<ci>").
_DEVICE = re.compile(r"^(\d+|MIG-[0-9A-Za-z-]+(/\d+/\d+)?)$")


def parse_local_gpus(raw: str) -> tuple[LocalGpu, ...]:
    """`EDGEINFER_LOCAL_GPUS`: `<class>:<device>[@<share>]`, comma-separated, e.g.
    "h100:0,h100:1" or "h100-1g:MIG-4f1c…@0.142857". A share below 1 must be a MIG slice:
    two runners time-slicing one GPU would each be charged the other's kernels
    (docs/decisions/0010-gpu-share-is-a-hardware-partition.md)."""
    gpus = []
    for item in list_items(raw):
        spec, share = split_share(item, f"EDGEINFER_LOCAL_GPUS {item!r}")
        gpu_class, sep, device = spec.partition(":")
        if not sep or not gpu_class or not _DEVICE.match(device):
            raise ConfigError(f"EDGEINFER_LOCAL_GPUS: {item!r} must be <class>:<device>[@<share>], "
                              "the device a CUDA index or a MIG UUID, e.g. h100:0")
        if share < 1 and not device.startswith("MIG-"):
            raise ConfigError(f"EDGEINFER_LOCAL_GPUS: {item!r} gives a share of a whole GPU; a "
                              "fraction must be a MIG slice (runners time-slicing one GPU would "
                              "each be charged the other's kernels: decision 0010)")
        gpus.append(LocalGpu(gpu_class, device, share))
    if len({gpu.device for gpu in gpus}) != len(gpus):
        raise ConfigError("EDGEINFER_LOCAL_GPUS names a device twice")
    return tuple(gpus)


def assign_device(gpu_class: str, gpus: tuple[LocalGpu, ...], in_use: set[str]) -> LocalGpu | None:
    """The device for a new replica: None (a CPU slot) for the cpu class, else a free device
    of the class."""
    if gpu_class == "cpu":
        return None
    for gpu in gpus:
        if gpu.gpu_class == gpu_class and gpu.device not in in_use:
            return gpu
    raise NoFreeDevice(f"no free {gpu_class} GPU on this machine (EDGEINFER_LOCAL_GPUS)")


@dataclass
class _Process:
    replica: Replica
    pid: int
    popen: subprocess.Popen[bytes] | None  # None: adopted from an earlier autoscaler
    device: str = ""

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            return alive(psutil.Process(self.pid))
        except psutil.NoSuchProcess:
            return False


class LocalProcessExecutor:
    def __init__(self, config: LocalExecutorConfig) -> None:
        self._config = config
        self._processes: dict[str, _Process] = {}

    def running(self) -> list[Replica]:
        return [p.replica for p in self._processes.values() if p.alive()]

    def exited(self) -> list[Replica]:
        return [p.replica for p in self._processes.values() if not p.alive()]

    async def adopt(self, deployments: list[Deployment]) -> None:
        """Take over the runners an earlier autoscaler of this namespace and state directory
        started and left running (it died; `edgeinfer up` restarted it): each is found by
        the assignment in its environment, so none is started twice or left unmanaged."""
        spool_root = (self._config.state_dir / "spool").resolve()
        for found in await asyncio.to_thread(find_runners, self._config.namespace, spool_root):
            if found.replica.runner_id not in self._processes:
                self._processes[found.replica.runner_id] = found
                log.info("adopted runner %s for %s in %s (pid %d)", found.replica.runner_id,
                         found.replica.deployment_id, found.replica.pop, found.pid)

    async def start(self, deployment: Deployment, pop: str, slot: int) -> Replica:
        c = self._config
        in_use = {p.device for p in self._processes.values() if p.device}
        gpu = assign_device(deployment.gpu_class, c.gpus, in_use)
        device = gpu.device if gpu else ""
        port = free_port()
        runner_id = "r" + secrets.token_hex(5)
        url = f"http://{c.advertise_host}:{port}"
        # Stable per (deployment, PoP, slot): a restarted replica publishes what its
        # predecessor left in the outbox.
        spool = c.state_dir / "spool" / deployment.id / pop / str(slot)
        logs = c.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "NATS_URL": c.runner_nats_urls.get(pop, c.nats_url),
            "EDGEINFER_NAMESPACE": c.namespace,
            "EDGEINFER_RUNNER_ID": runner_id,
            "EDGEINFER_POP": pop,
            "EDGEINFER_REGION": c.pops[pop].region,
            "EDGEINFER_RUNNER_URL": url,
            "EDGEINFER_DEPLOYMENT_ID": deployment.id,
            "EDGEINFER_MODEL_VERSION": deployment.model_version,
            "EDGEINFER_ARTIFACT_DIGEST": deployment.artifact_digest,
            "EDGEINFER_MODEL_FRAMEWORK": deployment.framework,
            # Exactly the assigned GPU (none for a CPU slot): the runner sees it as cuda:0.
            "CUDA_VISIBLE_DEVICES": device,
            "EDGEINFER_GPU_CLASS": deployment.gpu_class,
            "EDGEINFER_GPU_SHARE": str(gpu.share if gpu else c.gpu_share),
            "EDGEINFER_SPOOL_DIR": str(spool.resolve()),
            "EDGEINFER_ARTIFACT_CACHE": str((c.state_dir / "artifacts" / pop).resolve()),
            "EDGEINFER_SUPERVISOR_PID": str(c.supervisor_pid or os.getpid()),
            # One home per runner: BentoML keeps its Prometheus multiprocess files there, and
            # runners sharing one would each report the sum of all of them on /metrics.
            "BENTOML_HOME": str((c.state_dir / "bentoml" / runner_id).resolve()),
            "BENTOML_DO_NOT_TRACK": "True",
            # A CPU slot is one thread: keep numeric libraries from fanning out.
            "OMP_NUM_THREADS": "1",
        }
        log_file = open(logs / f"runner-{pop}-{runner_id}.log", "ab")
        popen = subprocess.Popen(
            [*c.command_prefix, sys.executable, "-m", "bentoml", "serve",
             "edgeinfer.services.runner.service:Runner",
             "--host", c.bind_host, "--port", str(port)],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        log_file.close()
        replica = Replica(runner_id, deployment.id, pop, slot, url, deployment_spec(deployment))
        self._processes[runner_id] = _Process(replica, popen.pid, popen, device)
        log.info("started runner %s for %s in %s (pid %d, %s)", runner_id, deployment.id, pop,
                 popen.pid, url)
        return replica

    async def stop(self, replica: Replica) -> None:
        process = self._processes.pop(replica.runner_id, None)
        if process is None:
            return
        if process.alive():
            await drain(replica.url, self._config.stop_timeout_s)
        await asyncio.to_thread(_stop_tree, process.pid, process.popen, self._config.stop_timeout_s)
        # Its metrics files and BentoML scratch space; the spool (usage) is kept per slot.
        shutil.rmtree(self._config.state_dir / "bentoml" / replica.runner_id, ignore_errors=True)

    async def roll(self, deployment: Deployment, pop: str) -> bool:
        return False  # the autoscaler replaces processes one by one (rollout.py)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self.stop(r) for r in list(self.running()) + self.exited()))


def find_runners(namespace: str, spool_root: Path) -> list[_Process]:
    """Runner processes of `namespace` whose spool is under `spool_root`: the BentoML
    arbiter of each (its workers share its environment, so the root of each group)."""
    by_runner: dict[str, list[tuple[psutil.Process, int, dict[str, str]]]] = {}
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
            parent = proc.ppid()
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
        spool = env.get("EDGEINFER_SPOOL_DIR", "")
        if (env.get("EDGEINFER_NAMESPACE") == namespace and env.get("EDGEINFER_RUNNER_ID")
                and Path(spool).parent.parent.parent == spool_root):
            by_runner.setdefault(env["EDGEINFER_RUNNER_ID"], []).append((proc, parent, env))
    found = []
    for runner_id, group in by_runner.items():
        pids = {proc.pid for proc, _, _ in group}
        roots = [(proc, env) for proc, parent, env in group if parent not in pids]
        if len(roots) != 1:
            continue
        proc, env = roots[0]
        slot = Path(env["EDGEINFER_SPOOL_DIR"])
        replica = Replica(runner_id, env["EDGEINFER_DEPLOYMENT_ID"], env["EDGEINFER_POP"],
                          int(slot.name), env["EDGEINFER_RUNNER_URL"], replica_spec(
                              env.get("EDGEINFER_MODEL_VERSION", ""),
                              env.get("EDGEINFER_ARTIFACT_DIGEST", ""),
                              env.get("EDGEINFER_MODEL_FRAMEWORK", ""),
                              env.get("EDGEINFER_GPU_CLASS", "")))
        found.append(_Process(replica, proc.pid, None, env.get("CUDA_VISIBLE_DEVICES", "")))
    return found


def _stop_tree(pid: int, popen: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        if popen is not None:
            popen.wait()
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        root.terminate()
    left = _wait_gone(tree, timeout_s)
    for proc in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    _wait_gone(left, 5)
    if popen is not None:
        popen.wait()


def _wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `procs` still running after `timeout_s`. A zombie counts as gone: an
    adopted runner is not our child, and its zombie waits for `edgeinfer up` to reap it
    (psutil.wait_procs would wait on it until the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [p for p in procs if alive(p)]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.05)
