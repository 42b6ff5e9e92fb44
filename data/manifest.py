"""Reading clip manifests: CSV with a header, or JSONL with one object per line."""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

REQUIRED_FIELDS = ("path", "caption")


@dataclass(frozen=True)
class ManifestEntry:
    """One clip: ``path`` is absolute (relative manifest paths are resolved against its folder)."""

    path: Path
    caption: str


def read_manifest(manifest: str | Path) -> list[ManifestEntry]:
    """Parse a ``.csv`` or ``.jsonl`` manifest with fields ``path`` and ``caption``.

    Extra fields (e.g. ``start_sec``/``end_sec``) are accepted and ignored. Raises ValueError
    if the file is missing, has an unknown suffix, lacks a required field, or has no entries.
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
    return [ManifestEntry(path=manifest.parent / path, caption=caption) for path, caption in rows]


def _read_csv(manifest: Path) -> list[tuple[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [f for f in REQUIRED_FIELDS if f not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"manifest {manifest} lacks columns {missing}; needs {list(REQUIRED_FIELDS)}, "
                f"has {reader.fieldnames}"
            )
        return [_validated(manifest, reader.line_num, row) for row in reader]


def _read_jsonl(manifest: Path) -> list[tuple[str, str]]:
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


def _validated(manifest: Path, line_num: int, row: dict) -> tuple[str, str]:
    path, caption = row.get("path"), row.get("caption")
    if not isinstance(path, str) or not path or not isinstance(caption, str):
        raise ValueError(
            f"manifest {manifest} line {line_num}: needs a non-empty string 'path' and a string "
            f"'caption', got path={path!r} caption={caption!r}"
        )
    return path, caption
