"""The blob store's only I/O: a small filesystem interface over POSIX-style relative keys.

Every byte the blob store reads or writes goes through :class:`BlobFS`, keyed by a relative path such as
``na/cell-0/rack-03/m-1/hot/vol-000042.dat``. :class:`LocalFS` maps keys onto a local folder; an object store or HDFS
implementation maps the same keys onto object names. Two operations need care there:

- ``append`` is only used on *open* hot volumes (Haystack's append-only files); on an object store an open volume
  is a multipart upload, sealed by completing it.
- ``write`` is atomic and durable: the key holds either its old bytes or all of the new ones, never a prefix
  (temp file + fsync + rename + directory fsync here; a single PUT on an object store).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


class BlobFSError(OSError):
    """A key that cannot be read or written, named."""


def _check_key(key: str) -> str:
    p = PurePosixPath(key)
    if p.is_absolute() or not key or any(part in ("..", ".", "") for part in key.split("/")):
        raise BlobFSError(f"blob key {key!r}: expected a relative path without '..', '.' or empty parts")
    return key


class BlobFS:
    """Interface; see :class:`LocalFS`."""

    def read(self, key: str, offset: int = 0, size: int | None = None) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def append(self, key: str, data: bytes, *, sync: bool = True) -> int:
        raise NotImplementedError

    def size(self, key: str) -> int:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError


class LocalFS(BlobFS):
    """Keys are files under ``root``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read(self, key: str, offset: int = 0, size: int | None = None) -> bytes:
        try:
            with open(self.path(key), "rb") as f:
                f.seek(offset)
                data = f.read() if size is None else f.read(size)
        except FileNotFoundError as e:
            raise BlobFSError(f"blob key {key!r}: no such file under {self.root}") from e
        if size is not None and len(data) != size:
            raise BlobFSError(f"blob key {key!r}: wanted {size} bytes at offset {offset}, file holds {len(data)}")
        return data

    def write(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def append(self, key: str, data: bytes, *, sync: bool = True) -> int:
        """Appends and returns the offset the data starts at."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            offset = f.tell()
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        return offset

    def truncate(self, key: str, size: int) -> None:
        """Cuts a torn tail off an append-only file (recovery only)."""
        with open(self.path(key), "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as e:
            raise BlobFSError(f"blob key {key!r}: no such file under {self.root}") from e

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if name.startswith("."):
                    continue  # temp files of writes in flight
                yield Path(dirpath, name).relative_to(self.root).as_posix()

    def temp_files(self) -> list[str]:
        """Temp files of atomic writes that never finished (their writer was killed)."""
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and ".tmp-" in name:  # LocalFS.write's ".<name>.tmp-<pid>"
                    out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def remove_temp_files(self) -> int:
        """Removes what :meth:`temp_files` lists (only while no writer runs: storage jobs are one at a time)."""
        found = self.temp_files()
        for key in found:
            (self.root / key).unlink(missing_ok=True)
        return len(found)

    def rename(self, src: str, dst: str) -> None:
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(src), target)
        _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
