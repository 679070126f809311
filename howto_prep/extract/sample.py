"""Assemble one WebDataset sample (schema version 1) from a video's decoded header and feature chunks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from howto_prep import schema
from howto_prep.extract.inputs import VideoRef, source_name
from howto_prep.decode import output_count, rows_3d
from howto_prep.shards import npy_bytes

EMPTY_CAPTIONS = {"start": [], "end": [], "text": []}


@dataclass
class Sample:
    key: str
    fields: dict[str, bytes]
    token_ids: np.ndarray
    duration: float
    notes: list[str] = field(default_factory=list)


def expected_rows(duration: float) -> dict[str, int]:
    """Rows each visual feature must have for `duration` seconds (see howto_prep.decode for the rule)."""
    return {schema.RESNET152.name: output_count(duration, schema.FPS_2D),
            schema.RESNEXT101.name: rows_3d(output_count(duration, schema.FPS_3D))}


def build_sample(video_id: str, path: VideoRef, header: dict[str, Any], chunks: dict[int, dict[str, np.ndarray]],
                 names: list[str], feature_info: dict[str, dict], captions: dict | None,
                 csv_row: dict | None, vocab=None) -> Sample:
    """Concatenate chunk rows in order, check their counts, add captions, tokens and meta.json."""
    info = header["info"]
    fields: dict[str, bytes] = {}
    missing = dict(header.get("missing", {}))
    notes: list[str] = []
    rows = expected_rows(info["duration"])
    for spec in schema.VISUAL_FEATURES:
        if spec.name not in names:
            continue
        parts = [chunks[i][spec.name] for i in sorted(chunks) if spec.name in chunks[i]]
        array = np.concatenate(parts, axis=0) if parts else np.zeros((0, spec.dim), np.float16)
        if array.shape != (rows[spec.name], spec.dim):
            raise RuntimeError(f"{spec.name}: got {array.shape} rows, expected ({rows[spec.name]}, {spec.dim})")
        fields[spec.field] = npy_bytes(array.astype(np.float16, copy=False))
    if schema.LOGMEL.name in names and header.get("logmel") is not None:
        fields[schema.LOGMEL.field] = npy_bytes(np.asarray(header["logmel"], dtype=np.float16))
    if captions is None:
        captions = EMPTY_CAPTIONS
        notes.append("not in caption.json: written with empty captions")
        missing["captions"] = "video id not in caption.json"
    fields[schema.CAPTIONS_FIELD] = json.dumps(captions).encode()
    token_ids = np.zeros(0, dtype=np.int64)
    if schema.TOKENS_FEATURE in names and vocab is not None:
        tokens, offsets = vocab.encode([str(text) for text in captions["text"]])
        fields[schema.TOKENS_FIELD] = npy_bytes(np.asarray(tokens, dtype=np.int32))
        fields[schema.TOKEN_OFFSETS_FIELD] = npy_bytes(np.asarray(offsets, dtype=np.int32))
        token_ids = np.asarray(tokens, dtype=np.int64)
    csv_row = csv_row or {}
    meta = {"video_id": video_id, "duration": info["duration"], "fps": info["fps"], "width": info["width"],
            "height": info["height"], "num_frames": info["num_frames"],
            "variable_frame_rate": info["variable_frame_rate"],
            "audio_sample_rate": header.get("audio_sample_rate"), "source": source_name(path),
            **{column: csv_row.get(column) for column in schema.CSV_META_COLUMNS},
            "schema_version": schema.SCHEMA_VERSION, "extractor_version": schema.EXTRACTOR_VERSION,
            "features": {name: feature_info[name] for name in names if name in feature_info
                         and (name != schema.LOGMEL.name or schema.LOGMEL.field in fields)},
            "missing": missing}
    fields = {schema.META_FIELD: json.dumps(meta, sort_keys=True).encode(), **fields}
    return Sample(key=video_id, fields=fields, token_ids=token_ids, duration=float(info["duration"]), notes=notes)
