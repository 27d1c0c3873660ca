"""The artifact formats a runner accepts, checked without running anything they contain.

Shared because the registry refuses a bad artifact at upload and the runner unpacks the
same bytes at start; both must agree on what a valid artifact is. Tenant artifacts are
never unpickled: an ONNX graph is a protobuf, a sentence-embedding model is a plain tar of
JSON files, a tokenizer and `model.safetensors` (a JSON header and raw tensors).

A sentence-embedding artifact is the directory sentence-transformers saves for a BERT-style
encoder with mean pooling (e.g. all-MiniLM-L6-v2), as an uncompressed tar.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
from pathlib import Path

FRAMEWORKS = ("onnx", "sentence-embedding")

EMBEDDING_REQUIRED = ("config.json", "tokenizer.json", "model.safetensors")
EMBEDDING_OPTIONAL = (
    "1_Pooling/config.json", "sentence_bert_config.json", "modules.json", "vocab.txt",
    "special_tokens_map.json", "tokenizer_config.json", "config_sentence_transformers.json",
)
_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024  # the format's own limit on the JSON header


class InvalidArtifact(ValueError):
    """The artifact is not a model this platform can serve; the message says why."""


def pack_embedding_model(directory: Path) -> bytes:
    """A deterministic tar of the files a runner needs (same files → same digest)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in (*EMBEDDING_REQUIRED, *EMBEDDING_OPTIONAL):
            path = directory / name
            if not path.is_file():
                if name in EMBEDDING_REQUIRED:
                    raise InvalidArtifact(f"{directory} has no {name}")
                continue
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_embedding_artifact(data: bytes) -> dict[str, bytes]:
    """The artifact's files by name, after checking every one the runner will read."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = tar.getmembers()
    except tarfile.TarError as exc:
        raise InvalidArtifact(f"not an uncompressed tar archive: {exc}") from None
    allowed = set(EMBEDDING_REQUIRED) | set(EMBEDDING_OPTIONAL)
    files: dict[str, bytes] = {}
    for member in members:
        if not member.isfile():
            raise InvalidArtifact(f"{member.name!r} is not a regular file (links and devices refused)")
        if member.name not in allowed:
            raise InvalidArtifact(f"unexpected file {member.name!r}; allowed: {sorted(allowed)}")
        extracted = tar.extractfile(member)
        assert extracted is not None  # a regular file always has content
        files[member.name] = extracted.read()
    missing = [name for name in EMBEDDING_REQUIRED if name not in files]
    if missing:
        raise InvalidArtifact(f"missing {missing}")
    config = _json(files, "config.json")
    if config.get("model_type") != "bert":
        raise InvalidArtifact(f"config.json: model_type {config.get('model_type')!r}; only 'bert' "
                              "encoders are served")
    if "1_Pooling/config.json" in files:
        pooling = _json(files, "1_Pooling/config.json")
        if not pooling.get("pooling_mode_mean_tokens"):
            raise InvalidArtifact("1_Pooling/config.json: only mean pooling is served")
    _json(files, "tokenizer.json")
    check_safetensors(files["model.safetensors"])
    return files


def check_safetensors(data: bytes) -> dict[str, object]:
    """Parse a safetensors header and check every tensor lies inside the file."""
    if len(data) < 8:
        raise InvalidArtifact("model.safetensors: shorter than its header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(_SAFETENSORS_HEADER_LIMIT, len(data) - 8):
        raise InvalidArtifact("model.safetensors: header length out of range")
    try:
        header = json.loads(data[8:8 + header_len])
    except ValueError as exc:
        raise InvalidArtifact(f"model.safetensors: header is not JSON: {exc}") from None
    body = len(data) - 8 - header_len
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = tensor["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise InvalidArtifact(f"model.safetensors: tensor {name!r} has no data_offsets") from None
        if not 0 <= start <= end <= body:
            raise InvalidArtifact(f"model.safetensors: tensor {name!r} lies outside the file")
    return header


def _json(files: dict[str, bytes], name: str) -> dict[str, object]:
    try:
        value = json.loads(files[name])
    except ValueError as exc:
        raise InvalidArtifact(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArtifact(f"{name} must hold a JSON object")
    return value
