"""Finding and reading data files on disk, with errors that say what is wrong and where.

fastvae downloads nothing: a missing file is a FileNotFoundError that lists where it was
looked for and which files are expected there.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence, Union

PathLike = Union[str, os.PathLike]

GZIP_MAGIC = b"\x1f\x8b"
NO_DOWNLOAD_HINT = (
    "fastvae downloads nothing: put the files there, pass root=..., or set the FASTVAE_DATA "
    "environment variable to the folder that holds them"
)


class DataNotFoundError(FileNotFoundError):
    """Data files or folders missing.  ``problem`` says what is missing and where it was
    looked for; the message adds ``advice`` on where to put them (the Python API's, which
    names ``root=``: the ``fastvae`` command gives its own, which names ``--data-root``)."""

    def __init__(self, caller: str, problem: str, advice: Optional[str] = NO_DOWNLOAD_HINT):
        super().__init__(f"fastvae.data.{caller}: {problem}" + (f". {advice}" if advice else ""))
        self.problem = problem


def data_root() -> Path:
    """The folder data files are looked for in when no root is given: the environment
    variable ``FASTVAE_DATA`` if set, else ``~/.cache/fastvae``."""
    configured = os.environ.get("FASTVAE_DATA")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fastvae"


def resolve_root(root: Optional[PathLike]) -> Path:
    return data_root() if root is None else Path(root).expanduser()


def candidate_folders(root: Path, subfolders: Sequence[str]) -> list[Path]:
    """``root``'s ``subfolders`` (the conventional layouts), then ``root`` itself."""
    return [root / sub for sub in subfolders] + [root]


def find_file(caller: str, folders: Sequence[Path], name: str, expected: Sequence[str]) -> Path:
    """The first of ``folder/name`` or ``folder/name.gz`` over ``folders`` that exists.

    FileNotFoundError otherwise, naming the file, every folder looked in and the
    ``expected`` files of the whole data set."""
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(folder) for folder in folders)
    raise DataNotFoundError(
        caller, f"could not find {name} (or {name}.gz); looked in: {looked}. "
        f"Expected files: {', '.join(expected)} (each plain or gzipped)"
    )


def read_bytes(caller: str, path: Path) -> bytes:
    """The contents of ``path``, unpacked if it is gzipped (told by its first bytes, not
    its name); ValueError naming the file if the gzip stream is corrupt or cut short."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"fastvae.data.{caller}: cannot read {path}: {error}") from error
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(
            f"fastvae.data.{caller}: {path} is a corrupt or truncated gzip file ({error})"
        ) from error
