"""Atomic file writing and provenance records.

Every output is written to a temporary file in the same directory and renamed into
place, so an interrupted job never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .errors import InputError

PROVENANCE_PACKAGES = (
    "ctrlbench", "torch", "torchvision", "diffusers", "transformers", "open-clip-torch",
    "torchmetrics", "snakemake", "numpy", "pandas", "pillow",
)


def _default_mode(directory: bool) -> int:
    """The mode a plain open()/mkdir() would give under the current umask: mkstemp and
    mkdtemp create private (0600/0700) entries, which collaborators on a shared
    cluster could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


# Errors of a full or read-only disk: re-raised naming the output they were writing.
DISK_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG,
                                          errno.EROFS) if code is not None)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the hidden `.name.XXXXXXXX.tmp*` files and folders that an earlier attempt
    at writing `path` left when it was killed (SIGKILL, node loss: no cleanup ran).

    Only exact temporaries of `path` match (mkstemp/mkdtemp's 8-character suffix), never
    those of a sibling output. Snakemake never runs two jobs with the same output at once,
    so a temporary of `path` seen here belongs to a dead attempt."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp(\..*)?")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _disk_error(error: OSError, path: Path) -> OSError:
    """The OSError of a failed write of `path`, naming `path` (same errno)."""
    inner = f" (while writing {error.filename})" if error.filename and str(error.filename) != str(path) else ""
    return OSError(error.errno, f"cannot write {path}: {error.strerror or error}{inner}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` only on success.

    On any error the temporary file is removed; temporaries of a killed earlier attempt
    are removed first (remove_stale_temporaries). A full or read-only disk (ENOSPC,
    EDQUOT, EFBIG, EROFS) is re-raised as an OSError (same errno) naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in DISK_ERRNOS:
            raise _disk_error(error, path) from error
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_image(path, image) -> None:
    """Save a PIL image atomically; the format follows the file extension."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=_PIL_FORMATS.get(path.suffix.lower(), "PNG"))


_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def read_table(path, columns=(), what: str = "table") -> pd.DataFrame:
    """A job's input CSV (item ids kept as strings), naming the file if it is missing
    or lacks a required column."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    frame = pd.read_csv(path, dtype={"item_id": str}, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{what} {path} lacks column(s) {', '.join(missing)}")
    return frame


# Manifest columns holding a path relative to a folder (the shard folder; ControlNet's
# base_image: the base shard folder), and `masks`, a JSON list of {class, path}.
MANIFEST_PATH_COLUMNS = ("image", "base_image", "canny", "stage1_image", "background", "panorama",
                         "selected_image")


def check_relative_path(text: str, where: str) -> str:
    """`text` unchanged if it is a relative path that stays inside its folder (no
    absolute path, no '..' part, no NUL); InputError naming `where` otherwise."""
    text = str(text)
    parts = text.replace("\\", "/").split("/")
    if "\0" in text or os.path.isabs(text) or text.startswith(("/", "\\")) or ".." in parts \
            or re.match(r"^[A-Za-z]:", text):
        raise InputError(f"{where}: path {text!r} leaves its folder (an absolute path or '..'); "
                         "manifest paths must be relative to the shard folder")
    return text


def check_manifest_paths(manifest: pd.DataFrame, where: str) -> pd.DataFrame:
    """Every path a manifest lists (MANIFEST_PATH_COLUMNS and the `masks` JSON) checked
    with check_relative_path, so a file outside the results cannot be read through it."""
    for column in MANIFEST_PATH_COLUMNS:
        if column in manifest.columns:
            for row, value in zip(manifest.get("item_id", manifest.index), manifest[column]):
                if isinstance(value, str) and value:
                    check_relative_path(value, f"{where}: item {row}, column {column}")
    if "masks" in manifest.columns:
        for row, value in zip(manifest.get("item_id", manifest.index), manifest["masks"]):
            try:
                entries = json.loads(value) if isinstance(value, str) and value.strip() else []
            except json.JSONDecodeError:
                continue  # the reader of the masks reports malformed JSON itself
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                    check_relative_path(entry["path"], f"{where}: item {row}, column masks")
    return manifest


def read_manifest(folder, columns=(), what: str = "manifest") -> pd.DataFrame:
    """A shard folder's manifest.csv (read_table) with its paths checked (check_manifest_paths)."""
    path = Path(folder) / "manifest.csv"
    return check_manifest_paths(read_table(path, columns, what), f"{what} {path}")


def package_versions(names=PROVENANCE_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(repo_dir: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(**extra: Any) -> dict[str, Any]:
    """What a result needs to be reproduced: versions, commit, platform, plus `extra`."""
    record = {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    record.update(extra)
    return record


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; rename it to `path` only on success.

    A job killed half-way leaves only a hidden `.name.*.tmp` folder, never a folder
    under the final name that could be taken for a result; the next attempt removes it.
    Any other error removes the
    temporary folder; a full or read-only disk is re-raised naming `path` (atomic_path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno in DISK_ERRNOS:  # a full disk: name the folder, not only the file
            raise _disk_error(error, path) from error
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def safe_name(name: str) -> str:
    """A file name built from an item id must stay inside its folder."""
    name = str(name)
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"unsafe file name {name!r}: only letters, digits, '.', '_' and '-' are allowed")
    return name
