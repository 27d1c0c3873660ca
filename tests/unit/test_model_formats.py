"""Artifact checks shared by the registry (at upload) and the runner (at start)."""

from __future__ import annotations

import io
import json
import struct
import tarfile

import pytest

from edgeinfer.services.registry.demo_model import minilm_artifact
from edgeinfer.shared.model_formats import InvalidArtifact, check_safetensors, read_embedding_artifact


def tar_of(files: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def safetensors_of(header: dict[str, object], body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


GOOD = {
    "config.json": json.dumps({"model_type": "bert"}).encode(),
    "tokenizer.json": b"{}",
    "model.safetensors": safetensors_of(
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
}


def test_the_packed_minilm_is_valid_and_deterministic() -> None:
    data = minilm_artifact()
    files = read_embedding_artifact(data)
    assert {"config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json"} <= set(files)
    assert minilm_artifact() == data  # same files, same bytes, same digest


def test_a_minimal_artifact_passes() -> None:
    assert set(read_embedding_artifact(tar_of(GOOD))) == set(GOOD)


@pytest.mark.parametrize("artifact, reason", [
    (b"not a tar", "not an uncompressed tar"),
    (tar_of({k: v for k, v in GOOD.items() if k != "tokenizer.json"}), "missing"),
    (tar_of({**GOOD, "pytorch_model.bin": b"pickle"}), "unexpected file"),
    (tar_of(GOOD, symlink="vocab.txt"), "not a regular file"),
    (tar_of({**GOOD, "config.json": b'{"model_type": "gpt2"}'}), "only 'bert'"),
    (tar_of({**GOOD, "config.json": b"{"}), "not valid JSON"),
    (tar_of({**GOOD, "1_Pooling/config.json": b'{"pooling_mode_cls_token": true}'}), "mean pooling"),
])
def test_bad_artifacts_are_refused_with_a_reason(artifact: bytes, reason: str) -> None:
    with pytest.raises(InvalidArtifact, match=reason):
        read_embedding_artifact(artifact)


@pytest.mark.parametrize("data, reason", [
    (b"\1\0", "shorter than its header"),
    (struct.pack("<Q", 10**9) + b"{}", "header length out of range"),
    (safetensors_of({"w": {"data_offsets": [0, 64]}}, b"\0" * 8), "outside the file"),
    (safetensors_of({"w": {}}, b""), "no data_offsets"),
])
def test_bad_safetensors_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidArtifact, match=reason):
        check_safetensors(data)
