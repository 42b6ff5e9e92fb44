"""Reading clip manifests: CSV with a header, or JSONL with one object per line."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

REQUIRED_FIELDS = ("path", "caption")


@dataclass(frozen=True)
class ManifestEntry:
    """One clip: ``path`` is absolute (relative manifest paths are resolved against its folder);
    ``start_sec`` / ``end_sec`` optionally restrict it to a segment of the video."""

    path: Path
    caption: str
    start_sec: float | None = None
    end_sec: float | None = None


def read_manifest(manifest: str | Path) -> list[ManifestEntry]:
    """Parse a ``.csv`` or ``.jsonl`` manifest with fields ``path`` and ``caption``.

    Optional fields ``start_sec`` / ``end_sec`` (seconds; empty means the video's start / end) cut
    a segment; other extra fields are ignored. Raises ValueError if the file is missing, has an
    unknown suffix, lacks a required field, has a bad segment, or has no entries.
    """
    manifest = Path(manifest).expanduser().absolute()
    if not manifest.is_file():
        raise ValueError(f"manifest {manifest} does not exist")
    suffix = manifest.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(manifest)
    elif suffix == ".jsonl":
        rows = _read_jsonl(manifest)
    else:
        raise ValueError(f"manifest {manifest} must end in .csv or .jsonl, got {suffix!r}")
    if not rows:
        raise ValueError(f"manifest {manifest} has no entries")
    return [
        ManifestEntry(manifest.parent / path, caption, start, end)
        for path, caption, start, end in rows
    ]


Row = tuple[str, str, "float | None", "float | None"]


def _read_csv(manifest: Path) -> list[Row]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in REQUIRED_FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"manifest {manifest} lacks columns {missing}; needs {list(REQUIRED_FIELDS)}, "
                f"has {reader.fieldnames}"
            )
        return [_validated(manifest, reader.line_num, row) for row in reader]


def _read_jsonl(manifest: Path) -> list[Row]:
    rows = []
    with manifest.open(encoding="utf-8") as fh:
        for line_num, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"manifest {manifest} line {line_num}: invalid JSON ({err})"
                ) from err
            if not isinstance(row, dict):
                raise ValueError(f"manifest {manifest} line {line_num}: expected a JSON object")
            rows.append(_validated(manifest, line_num, row))
    return rows


def _seconds(manifest: Path, line_num: int, row: dict, field: str) -> float | None:
    value = row.get(field)
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(
            f"manifest {manifest} line {line_num}: {field} must be a number >= 0, got {value!r}"
        )
    return seconds


def _validated(manifest: Path, line_num: int, row: dict) -> Row:
    path, caption = row.get("path"), row.get("caption")
    if not isinstance(path, str) or not path or not isinstance(caption, str):
        raise ValueError(
            f"manifest {manifest} line {line_num}: needs a non-empty string 'path' and a string "
            f"'caption', got path={path!r} caption={caption!r}"
        )
    start = _seconds(manifest, line_num, row, "start_sec")
    end = _seconds(manifest, line_num, row, "end_sec")
    if start is not None and end is not None and end <= start:
        raise ValueError(
            f"manifest {manifest} line {line_num}: end_sec ({end}) must be after start_sec ({start})"
        )
    return path, caption, start, end
