"""Runner config, from the environment the executor sets (docs/config.md lists every key)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from edgeinfer.shared.config import (
    ConfigError,
    env_choice,
    env_float,
    env_int,
    env_optional,
    env_str,
    parse_gpu_share,
)
from edgeinfer.shared.model_formats import FRAMEWORKS


@dataclass(frozen=True)
class RunnerConfig:
    runner_id: str
    pop: str
    region: str
    url: str
    deployment_id: str
    model_version: str
    artifact_digest: str
    nats_url: str
    framework: str = "onnx"
    namespace: str = "edgeinfer"
    gpu_class: str = "cpu"
    gpu_share: Decimal = Decimal(1)
    capacity: int = 8
    heartbeat_interval_s: float = 1.0
    spool_dir: Path = Path(".edgeinfer/spool")
    cache_dir: Path = Path(".edgeinfer/artifacts")
    drain_timeout_s: float = 20.0
    outbox_linger_s: float = 0.2
    cuda_graphs: bool = True
    # The device the executor gave this process (one CUDA index or MIG UUID), "" for none.
    visible_devices: str = ""
    # The process that started this runner; the runner exits when it is gone. 0: none.
    supervisor_pid: int = 0
    # The JetStream domain holding the artifacts: "hub" for a runner at a PoP whose own
    # NATS is a leaf node (docs/topology.md); None: the NATS it connects to.
    artifact_domain: str | None = None


def runner_config_from_env(env: Mapping[str, str] | None = None) -> RunnerConfig:
    env = os.environ if env is None else env
    required = {}
    for key in ("EDGEINFER_RUNNER_ID", "EDGEINFER_POP", "EDGEINFER_REGION", "EDGEINFER_RUNNER_URL",
                "EDGEINFER_DEPLOYMENT_ID", "EDGEINFER_MODEL_VERSION", "EDGEINFER_ARTIFACT_DIGEST",
                "NATS_URL"):
        value = env.get(key, "").strip()
        if not value:
            raise ConfigError(f"{key} is required by the runner (the executor sets it)")
        required[key] = value
    share = parse_gpu_share(env_str(env, "EDGEINFER_GPU_SHARE", str(RunnerConfig.gpu_share)),
                            "EDGEINFER_GPU_SHARE")
    return RunnerConfig(
        runner_id=required["EDGEINFER_RUNNER_ID"],
        pop=required["EDGEINFER_POP"],
        region=required["EDGEINFER_REGION"],
        url=required["EDGEINFER_RUNNER_URL"],
        deployment_id=required["EDGEINFER_DEPLOYMENT_ID"],
        model_version=required["EDGEINFER_MODEL_VERSION"],
        artifact_digest=required["EDGEINFER_ARTIFACT_DIGEST"],
        nats_url=required["NATS_URL"],
        framework=env_choice(env, "EDGEINFER_MODEL_FRAMEWORK", RunnerConfig.framework, FRAMEWORKS),
        namespace=env_str(env, "EDGEINFER_NAMESPACE", RunnerConfig.namespace),
        gpu_class=env_str(env, "EDGEINFER_GPU_CLASS", RunnerConfig.gpu_class),
        gpu_share=share,
        capacity=env_int(env, "EDGEINFER_RUNNER_CAPACITY", RunnerConfig.capacity, lo=1, hi=4096),
        heartbeat_interval_s=env_float(env, "EDGEINFER_HEARTBEAT_INTERVAL_S",
                                       RunnerConfig.heartbeat_interval_s, lo=0.1, hi=30),
        spool_dir=Path(env_str(env, "EDGEINFER_SPOOL_DIR", str(RunnerConfig.spool_dir))),
        cache_dir=Path(env_str(env, "EDGEINFER_ARTIFACT_CACHE", str(RunnerConfig.cache_dir))),
        drain_timeout_s=env_float(env, "EDGEINFER_DRAIN_TIMEOUT_S", RunnerConfig.drain_timeout_s,
                                  lo=0, hi=600),
        outbox_linger_s=env_float(env, "EDGEINFER_OUTBOX_LINGER_S", RunnerConfig.outbox_linger_s,
                                  lo=0, hi=60),
        cuda_graphs=env_choice(env, "EDGEINFER_CUDA_GRAPHS", "on", ("on", "off")) == "on",
        visible_devices=env_str(env, "CUDA_VISIBLE_DEVICES", RunnerConfig.visible_devices),
        supervisor_pid=env_int(env, "EDGEINFER_SUPERVISOR_PID", RunnerConfig.supervisor_pid,
                               lo=0, hi=2**31),
        artifact_domain=env_optional(env, "EDGEINFER_ARTIFACT_DOMAIN"),
    )
