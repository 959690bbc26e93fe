"""The local store: folders on disk."""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from loguru import logger

from bidsapp.errors import LocalIOError, LocationNotFound, OutputNotWritable
from bidsapp.stores.base import Entry, Store, md5_of
from bidsapp.stores.progress import Progress


def file_md5(path: Path) -> str:
    """md5 of a local file, read in chunks."""
    with path.open("rb") as fh:
        return md5_of(fh)


def copy_hashed(src: Path, dest: Path) -> str:
    """Copy a file, computing its md5 from the bytes as they are written (read once)."""
    digest = hashlib.md5(usedforsecurity=False)
    with src.open("rb") as fin, dest.open("wb") as fout:
        while block := fin.read(1 << 20):
            digest.update(block)
            fout.write(block)
    return digest.hexdigest()


FICLONE = 0x40049409  # linux/fs.h: share the source's blocks copy-on-write (btrfs, xfs)


_NO_REFLINK: set[tuple[int, int]] = set()
"""(source device, destination device) pairs whose file system refused a reflink: not asked
again (each try costs two opens and an unlink per file; 7,355 files, about a second)."""


def _link(src: Path, dest: Path) -> bool:
    """Make `dest` the same bytes as `src` without copying them: a reflink, else a hard link."""
    devices = (src.stat().st_dev, dest.parent.stat().st_dev)
    if devices not in _NO_REFLINK:
        try:
            with src.open("rb") as fin, dest.open("wb") as fout:
                fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return True
        except OSError as exc:
            dest.unlink(missing_ok=True)
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL):
                _NO_REFLINK.add(devices)
    try:
        os.link(src, dest)
    except OSError:  # another file system, or links refused (protected_hardlinks): copy
        return False
    return True


class LocalStore:
    """A folder on disk; every path is checked to stay inside it."""

    def __init__(self, root: Path, *, create: bool = False, role: str = "") -> None:
        self.root = root.expanduser().absolute()
        role = role or ("OUTPUT" if create else "SOURCE")
        if role == "OUTPUT" and not self.root.exists():
            if not self.root.parent.is_dir():
                raise LocationNotFound(
                    f"OUTPUT {self.root} was not found, nor its parent folder",
                    hint="bidsapp creates OUTPUT's last folder only: check the path for a typo",
                )
            if not create:
                missing = LocationNotFound(f"OUTPUT {self.root} does not exist yet")
                missing.creatable = True
                raise missing
            try:
                self.root.mkdir()
            except OSError as exc:
                raise OutputNotWritable(
                    f"cannot create OUTPUT {self.root}: {exc.strerror}"
                ) from exc
            logger.info("OUTPUT {} did not exist: created it in its parent folder", self.root)
        if not self.root.is_dir():
            raise LocationNotFound(f"{role} {self.root} is not an existing folder")

    def describe(self) -> str:
        return str(self.root)

    def _path(self, path: str) -> Path:
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"store paths are relative and stay inside the store: {path!r}")
        return self.root.joinpath(*rel.parts)

    def list(self, path: str) -> list[Entry]:
        folder = self._path(path)
        if not folder.is_dir():
            raise LocationNotFound(f"{path or '.'} is not a folder in {self.root}")
        entries = []
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            try:
                st = child.stat()
            except OSError:  # a broken link: listed as the file it claims to be, never read
                st = child.lstat()
            is_dir = child.is_dir()
            key = "" if is_dir else f"{st.st_size}:{st.st_mtime_ns}"
            entries.append(Entry(child.name, is_dir, 0 if is_dir else st.st_size, key))
        return entries

    def walk(self, path: str) -> Iterator[tuple[str, Entry]]:
        base = self._path(path)
        if not base.is_dir():
            raise LocationNotFound(f"{path or '.'} is not a folder in {self.root}")
        inside = base.resolve()
        for dirpath, dirnames, filenames in os.walk(base):  # never descends into linked folders
            dirnames.sort()
            here = Path(dirpath)
            linked = [name for name in dirnames if (here / name).is_symlink()]
            for name in sorted([*filenames, *linked]):
                full = here / name
                rel = full.relative_to(base).as_posix()
                yield rel, _entry(full, inside)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def read_bytes(self, path: str) -> bytes:
        return self._path(path).read_bytes()

    def write_bytes(self, path: str, data: bytes) -> None:
        target = self._path(path)
        with _writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)  # after a failed write (a full disk): no leftover

    def download(self, path: str, dest: Path) -> str:
        """A reflink or hard link where the file system allows (no bytes read: the md5 is '');
        else a copy, hashed as it is written. Staging never writes into a staged file (it
        replaces one), so a link leaves the user's file untouched."""
        src = self._path(path)
        with _reading(dest):
            if _link(src, dest):
                return ""
            return copy_hashed(src, dest)

    def download_many(
        self,
        items: Sequence[tuple[str, Path]],
        *,
        progress: Progress | None = None,
        copy: bool = False,
    ) -> builtins.list[str]:
        md5s = []
        for path, dest in items:
            if copy:
                with _reading(dest):
                    md5s.append(copy_hashed(self._path(path), dest))
            else:
                md5s.append(self.download(path, dest))
            if progress is not None:
                progress.advance(dest.stat().st_size)
        return md5s

    def read_head(self, path: str, size: int) -> bytes:
        with self._path(path).open("rb") as fh:
            return fh.read(size)

    def upload(self, src: Path, path: str) -> str:
        target = self._path(path)
        with _writing(target):
            target.parent.mkdir(parents=True, exist_ok=True)
            md5 = copy_hashed(src, target)
        if target.stat().st_size != src.stat().st_size:
            raise LocalIOError(f"copy of {path} does not match its source (size differs)")
        return md5

    def upload_many(self, items: Sequence[tuple[Path, str]]) -> builtins.list[str]:
        return [self.upload(src, path) for src, path in items]

    def folder_name(self, path: str) -> str:
        return PurePosixPath(path).name

    def md5(self, path: str) -> str:
        return file_md5(self._path(path))

    def key(self, path: str) -> str:
        st = self._path(path).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def prefetch(self, path: str) -> None:
        pass  # a lookup on disk is a stat: nothing to gain

    def make_folder(self, path: str) -> None:
        target = self._path(path)
        with _writing(target):
            target.mkdir(parents=True, exist_ok=True)

    def move(self, src: str, dst: str) -> None:
        target = self._path(dst)
        if target.exists():
            raise FileExistsError(f"{dst} exists")
        with _writing(target):
            os.rename(self._path(src), target)

    def remove(self, path: str, *, purge: bool = False) -> None:
        target = self._path(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=False)
        else:
            target.unlink(missing_ok=True)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        path = self._path(f".bidsapp/locks/{name}.lock")
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = path.open("a")
        try:
            # flock dies with the process, so a killed job never leaves a stale lock behind.
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()


def _entry(full: Path, inside: Path) -> Entry:
    """A walked file's entry; a link is listed, not followed (it could reach another patient's
    exam or a system file), and neither is a FIFO, socket or device read."""
    st = full.lstat()
    if stat.S_ISLNK(st.st_mode):
        try:
            target = full.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling, or a loop
            return Entry(full.name, False, skipped="broken symbolic link")
        if not target.is_relative_to(inside):
            return Entry(full.name, False, skipped="symbolic link to outside the exam folder")
        return Entry(full.name, False, skipped="symbolic link (its target is staged itself)")
    if not stat.S_ISREG(st.st_mode):
        return Entry(full.name, False, skipped="not a regular file (FIFO, socket or device)")
    return Entry(full.name, False, st.st_size, f"{st.st_size}:{st.st_mtime_ns}")


@contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Turn OS errors while writing OUTPUT into the documented exit codes."""
    try:
        yield
    except PermissionError as exc:
        raise OutputNotWritable(f"cannot write {target}: permission denied") from exc
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise OutputNotWritable(f"cannot write {target}: {exc.strerror}") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise LocalIOError(
                f"cannot write {target}: {exc.strerror}",
                hint="free space on OUTPUT's disk, then rerun: the rerun finishes or redoes it",
            ) from exc
        raise


@contextmanager
def _reading(dest: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and not dest.parent.exists():
            raise LocalIOError(f"work dir vanished while staging: {exc.strerror}") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise LocalIOError(f"cannot stage into {dest.parent}: {exc.strerror}") from exc
        raise


_CHECK: Store = LocalStore.__new__(LocalStore)  # mypy proves LocalStore implements Store
