"""Read back what an offline W&B run holds, from its ``run-<id>.wandb`` file.

The file is W&B's record log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then
32 KiB blocks of chunks, each a 7-byte chunk header (CRC-32, length, type: 1 full,
2 first, 3 middle, 4 last) and a piece of a protobuf ``Record``
(``wandb.proto.wandb_internal_pb2``). Tests use it to check the run itself, not only
ldiff's local mirror of it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7


@dataclass
class OfflineRun:
    """The run's identity, config, history rows and final summary values (JSON-decoded)."""

    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pieces = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pieces += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def read_run(directory: Path) -> OfflineRun:
    """The run in ``directory`` (an ``offline-run-*`` folder)."""
    (path,) = Path(directory).glob("run-*.wandb")
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.group, run.job_type, run.tags = r.display_name, r.run_group, r.job_type, list(r.tags)
            run.config.update({item.key: json.loads(item.value_json) for item in r.config.update})
        elif kind == "config":
            run.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(item): json.loads(item.value_json) for item in record.summary.update})
    return run


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``wandb_dir`` (a ``wandb/`` folder), oldest first."""
    return [read_run(d) for d in sorted(Path(wandb_dir).glob("offline-run-*"))]
