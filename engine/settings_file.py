"""An app's remembered settings as one small JSON file in the platform's config folder, shared by the apps.

A dataclass's fields go to JSON and come back field by field: a value of the wrong type keeps that field's
default, so a damaged or older file never stops an app (a setting is a convenience, not a requirement).
Writes are atomic (engine.atomic), so a crash mid-write keeps the previous file. No torch, no Qt, no Textual.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable

import platformdirs

from engine.atomic import atomic_path

APP_NAME = "ardiff"


def config_path(file_name: str) -> Path:
    """`file_name` in the user's config folder for ardiff (looked up on each call, so tests can redirect
    platformdirs or XDG_CONFIG_HOME)."""
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / file_name


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """The JSON object stored at `path`; None when the file is missing, unreadable, not JSON or no object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def apply_fields(target: Any, data: dict[str, Any], skip: Iterable[str] = ()) -> None:
    """Set each dataclass field of `target` found in `data` whose value has the type of the field's current
    value (an int is accepted for a float; a bool is never taken for a number, nor a number for a bool).
    Fields in `skip`, fields whose current value is None, and values of another type keep their value."""
    skip = set(skip)
    for f in fields(target):
        if f.name in skip or f.name not in data:
            continue
        default, value = getattr(target, f.name), data[f.name]
        if default is None:
            continue  # no type to check against: the caller reads these itself
        if isinstance(default, bool) != isinstance(value, bool):
            continue
        if not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            else:
                continue  # wrong type: keep the default rather than crash later
        setattr(target, f.name, value)


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> bool:
    """Write `data` as JSON to `path` atomically; False (and nothing changed) when the folder is read-only or
    full: an app goes on without remembering rather than failing."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    except OSError:
        return False
    return True


def to_json(settings: Any, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """A dataclass's fields as a JSON-ready dict, without those in `leave_out` (a path, a cache)."""
    assert is_dataclass(settings)
    leave_out = set(leave_out)
    return {k: v for k, v in asdict(settings).items() if k not in leave_out}
