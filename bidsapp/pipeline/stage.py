"""Stage: one subject's exam folder from a store → a verified local DICOM tree in the work dir.

Source names never become local paths: every staged file gets a numbered name, so `..`, absolute
paths, zip slip, control characters and patient names in file names cannot reach the file system.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

import pydicom
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag
from pydicom.valuerep import VR

from bidsapp.errors import BadInputData
from bidsapp.heuristic.headers import ENHANCED_CLASSES, FileRecord, record
from bidsapp.privacy.phi import tokenize
from bidsapp.stores import Store
from bidsapp.timing import Timings

DICOMDIR_UID = "1.2.840.10008.1.3.10"
MAX_ARCHIVE_DEPTH = 3
# Expanded : compressed. DICOM rarely compresses beyond 20:1; zip bombs reach 1000:1.
MAX_RATIO = 200
RATIO_FROM = 1 << 20  # smaller members may compress as they like
FREE_SHARE = 0.9  # archives may fill at most this share of the work dir's free space
PHI_FIELDS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "AccessionNumber")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DT = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")
PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
_KNOWN_VRS = {vr.value for vr in VR}
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
# MR, enhanced MR, CT, enhanced CT, PET, secondary capture: image classes that must have pixels.
IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1",
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.2.1",
    "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.7",
}


@dataclass
class Study:
    """One StudyInstanceUID's files, staged into their own folder."""

    uid: str
    started: str  # StudyDate+StudyTime, for acquisition order
    folder: Path
    files: int = 0
    records: list[FileRecord] = field(default_factory=list)  # each file's, in file-name order


@dataclass
class StagedExam:
    """What staging produced and what it set aside (source names kept only in memory)."""

    studies: list[Study]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source name, reason)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    repaired_dates: int = 0
    headers: list[dict[str, Any]] = field(default_factory=list)  # distinct PHI field values
    demographics: dict[str, str] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0


def stage(
    store: Store,
    exam: str,
    work: Path,
    timings: Timings | None = None,
    *,
    one_person: bool = False,
) -> StagedExam:
    """Download, unpack, check and sort one exam folder into work/dicom/study-N/.

    Studies of different patients fail (65) unless `one_person` (the subject map says so).
    """
    download = work / "download"
    download.mkdir(mode=0o700, parents=True, exist_ok=True)
    pending: list[tuple[str, Path]] = []
    wanted: list[tuple[str, Path]] = []
    set_aside: list[tuple[str, str]] = []
    total_bytes = 0
    for n, (rel, entry) in enumerate(store.walk(exam)):
        if entry.skipped:  # links, shortcuts and special files are listed, never read
            set_aside.append((shown(rel), entry.skipped))
            continue
        local = download / f"{n:07d}"
        wanted.append((f"{exam}/{rel}" if exam else rel, local))
        pending.append((shown(rel), local))
        total_bytes += entry.size
    timings = timings or Timings()
    with timings.step("stage/copy"):
        store.download_many(wanted)  # in parallel where the store gains by it (Drive)
    if not pending:
        what = f"holds no files it can read ({len(set_aside)} set aside)" if set_aside else ""
        raise BadInputData(
            f"the exam folder {what or 'is empty'}",
            hint="check the subject map points at the exam",
        )

    result = StagedExam(studies=[], bytes=total_bytes, skipped=set_aside)
    budget = _Budget(int(shutil.disk_usage(download).free * FREE_SHARE))
    files = list(_expand(pending, download, 0, result, budget))
    by_study: dict[str, list[tuple[Path, FileRecord]]] = {}
    started: dict[str, str] = {}
    seen_headers: set[tuple[str, ...]] = set()
    with timings.step("stage/headers"):
        inspected = _inspect_all([p for _, p in files])
    for (rel, path), info in zip(files, inspected, strict=True):
        if isinstance(info, str):
            (result.corrupt if info.startswith("corrupt") else result.skipped).append((rel, info))
            path.unlink()
            continue
        result.repaired_dates += info.repaired
        by_study.setdefault(info.study_uid, []).append((path, info.record))
        previous = started.get(info.study_uid, info.started)
        started[info.study_uid] = min(previous or info.started, info.started)
        key = tuple(str(v) for v in info.phi.values())
        if key not in seen_headers:
            seen_headers.add(key)
            result.headers.append(dict(info.phi))
        result.demographics = result.demographics or info.demographics

    if not by_study:
        what = "only corrupt DICOM files" if result.corrupt else "no DICOM files"
        raise BadInputData(
            f"the exam folder holds {what}", hint="check the exam was exported as DICOM"
        )
    patients = distinct_patients(result.headers)
    if patients > 1 and not one_person:
        raise BadInputData(
            f"the exam folder holds studies of {patients} different patients (by PatientID, or "
            "by name where the ID is missing)",
            hint="map each patient's folder to its own participant, or write 'yes' in the "
            "subject map's one_person column if they are one person",
        )
    dicom = work / "dicom"
    for k, uid in enumerate(sorted(by_study, key=lambda u: (started[u], u)), start=1):
        folder = dicom / f"study-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        staged = sorted(by_study[uid], key=lambda p: p[0])
        for n, (path, _) in enumerate(staged, start=1):
            path.rename(folder / f"{n:06d}.dcm")
        records = [r for _, r in staged]
        result.studies.append(Study(uid, started[uid], folder, len(staged), records))
        result.files += len(staged)
    return result


def shown(name: str) -> str:
    """A source name as text: bytes that were not UTF-8 shown as \\xNN (names stay in memory
    and reports; they never become paths)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def distinct_patients(headers: list[dict[str, Any]]) -> int:
    """How many people the staged headers belong to: the distinct PatientIDs, plus each name
    seen only without an ID that no study with an ID carries (case and accents aside)."""
    ids: set[tuple[str, ...]] = set()
    named_with_id: set[tuple[str, ...]] = set()
    named_only: set[tuple[str, ...]] = set()
    for header in headers:
        pid = tokenize(str(header.get("PatientID") or ""))
        name = tokenize(str(header.get("PatientName") or ""))
        if pid:
            ids.add(pid)
            named_with_id.add(name)
        elif name:
            named_only.add(name)
    return max(len(ids) + len(named_only - named_with_id), 1 if headers else 0)


@dataclass(frozen=True)
class _Inspected:
    """What staging keeps of one good DICOM file (plain data: it crosses process boundaries)."""

    study_uid: str
    started: str
    phi: dict[str, Any]
    demographics: dict[str, str]
    repaired: bool
    record: FileRecord


def _inspect_all(paths: list[Path]) -> list[_Inspected | str]:
    """Inspect files in parallel when there are many: header parsing is CPU-bound."""
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < 64 or workers < 2:
        return [_inspect(p) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_inspect, paths, chunksize=32))


def _inspect(path: Path) -> _Inspected | str:
    """Check one file, blank its unparsable dates; or say why it is not used.

    A staged file can be a hard link to the user's SOURCE file: it is never written in place,
    only replaced by a new file.
    """
    verdict = _read_dicom(path)
    if isinstance(verdict, str):
        return verdict
    ds, bad_dates = verdict
    for tag in bad_dates:
        ds[tag].value = ""
    repaired = bool(bad_dates)
    if repaired:
        with warnings.catch_warnings(), config.disable_value_validation():
            warnings.simplefilter("ignore")
            full = pydicom.dcmread(path, force=True)
            _repair_dates(full)
            repaired_copy = path.with_name(path.name + ".repaired")
            full.save_as(repaired_copy)
            os.replace(repaired_copy, path)
    if str(ds.get("SOPClassUID", "")) in ENHANCED_CLASSES and "ASL" in ds.get("ImageType", []):
        # enhanced ASL keeps each volume's type (label, control, M0) in its per-frame groups
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return _Inspected(
        study_uid=str(ds.get("StudyInstanceUID", "")),
        started=f"{ds.get('StudyDate', '') or ''}{ds.get('StudyTime', '') or ''}",
        phi={k: _plain(ds.get(k)) for k in PHI_FIELDS},
        demographics={
            "age": str(ds.get("PatientAge", "") or ""),
            "sex": str(ds.get("PatientSex", "") or ""),
        },
        repaired=repaired,
        record=record(ds),
    )


def _plain(value: object) -> str | list[str]:
    """A header value as plain strings (PersonName and MultiValue do not cross processes)."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]  # type: ignore[attr-defined]
    return str(value)


@dataclass
class _Budget:
    """Bytes archives may still expand to in the work dir."""

    left: int


class _Refused(Exception):
    """An archive member that is not expanded, and why."""


def _expand(
    items: list[tuple[str, Path]], folder: Path, depth: int, result: StagedExam, budget: _Budget
) -> Iterator[tuple[str, Path]]:
    """Yield plain files; unpack archives (member names are shown, never used as paths).

    Members that would expand beyond MAX_RATIO or the work dir's free space are refused and
    listed with the skipped files, as is an archive that cannot be read.
    """
    for rel, path in items:
        if _has_dicom_magic(path) or not _is_archive(path):
            yield rel, path
            continue
        if depth >= MAX_ARCHIVE_DEPTH:
            result.skipped.append((rel, "archive nested too deep"))
            path.unlink()
            continue
        members: list[tuple[str, Path]] = []
        try:
            for member in _unpack(path, folder, rel, budget):
                if isinstance(member, tuple):
                    members.append(member)
                else:
                    result.skipped.append((member.args[0], f"refused: {member.args[1]}"))
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a full or failing work disk is not bad input
            result.skipped.append((rel, f"archive cannot be read ({type(exc).__name__})"))
        path.unlink()
        yield from _expand(members, folder, depth + 1, result, budget)


def _is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or tarfile.is_tarfile(path)


def _check_member(name: str, size: int, packed: int, budget: _Budget, already: int = 0) -> None:
    """Raise _Refused unless a member of `size` bytes may expand: it fits the budget, and with
    what `already` came from the same `packed` compressed bytes it stays under MAX_RATIO."""
    if size > budget.left:
        raise _Refused(name, f"{size} bytes would not fit in the work dir's free space")
    total = already + size
    if total > RATIO_FROM and total > MAX_RATIO * max(packed, 1):
        raise _Refused(name, f"compressed more than {MAX_RATIO}:1 (an archive bomb?)")


def _copy_member(src: IO[bytes], local: Path, size: int, budget: _Budget) -> None:
    """Copy at most `size` bytes (what the archive declares) and charge them to the budget."""
    written = 0
    with local.open("wb") as dst:
        while written < size and (block := src.read(min(1 << 20, size - written))):
            dst.write(block)
            written += len(block)
    budget.left -= written


def _unpack(
    archive: Path, folder: Path, rel: str, budget: _Budget
) -> Iterator[tuple[str, Path] | _Refused]:
    stem = archive.name
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for n, info in enumerate(zf.infolist()):
                if info.is_dir():
                    continue
                name = f"{rel}!{info.filename}"
                try:
                    _check_member(name, info.file_size, info.compress_size, budget)
                except _Refused as refused:
                    yield refused
                    continue
                local = folder / f"{stem}.{n:06d}"
                with zf.open(info) as src:
                    _copy_member(src, local, info.file_size, budget)
                yield name, local
        return
    packed, expanded = archive.stat().st_size, 0  # a tar's members share its compression
    with tarfile.open(archive) as tf:
        for n, member in enumerate(tf.getmembers()):
            if not member.isfile():
                continue  # links and devices are never followed out of an archive
            name = f"{rel}!{member.name}"
            try:
                _check_member(name, member.size, packed, budget, expanded)
            except _Refused as refused:
                yield refused
                continue
            member_file = tf.extractfile(member)
            if member_file is None:
                continue
            local = folder / f"{stem}.{n:06d}"
            with member_file:
                _copy_member(member_file, local, member.size, budget)
            expanded += member.size
            yield name, local


def _has_dicom_magic(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _header_end(tag: BaseTag, vr: str | None, length: int) -> bool:
    # Everything staging needs sits in groups 0002-0028; what follows (vendor private groups,
    # enhanced functional groups) can be most of the header and is left to heudiconv.
    return bool(tag.group > 0x0028)


def _read_dicom(path: Path) -> tuple[pydicom.Dataset, list[BaseTag]] | str:
    """The header and its dates heudiconv cannot parse, or why the file is not used: 'not
    DICOM …', 'DICOMDIR …' or 'corrupt …'."""
    magic = _has_dicom_magic(path)
    try:
        with path.open("rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's value warnings can quote patient data
            ds = read_partial(fh, stop_when=_header_end, force=True)
            bad_dates = _bad_dates(ds)
            media_class = str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))
            if media_class == DICOMDIR_UID or "DirectoryRecordSequence" in ds:
                return "DICOMDIR (an index, not an image)"
            if "SOPClassUID" not in ds or "StudyInstanceUID" not in ds:
                return "corrupt DICOM (no SOP class or study UID)" if magic else "not DICOM"
            problem = _pixel_problem(fh, ds, path.stat().st_size)
    except InvalidDicomError:
        return "corrupt DICOM (unreadable header)" if magic else "not DICOM"
    except Exception as exc:  # pydicom raises many kinds on damaged input; all mean the same
        return f"corrupt DICOM ({type(exc).__name__})" if magic else "not DICOM"
    if problem:
        return f"corrupt DICOM ({problem})"
    return ds, bad_dates


def _pixels_end_the_file(fh: BinaryIO, ds: pydicom.Dataset, size: int, *, implicit: bool) -> bool:
    """Whether the file ends with an uncompressed PixelData element of exactly the size the
    image attributes give (what nearly every file holds); False means: look closer."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        expected = (
            int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) * frames
        ) * (int(ds.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return False
    expected += expected % 2  # values are padded to an even length
    head = 8 if implicit else 12
    start = size - expected - head
    if expected <= 0 or start < 0:
        return False
    back = fh.tell()
    fh.seek(start)
    element = fh.read(head)
    fh.seek(back)  # the caller walks on from where it was when this says no
    if element[:4] != b"\xe0\x7f\x10\x00":
        return False
    length = struct.unpack("<I", element[4:8] if implicit else element[8:12])[0]
    return bool(length == expected)


def _pixel_problem(fh: BinaryIO, ds: pydicom.Dataset, size: int) -> str:
    """Why the pixel data is unusable ('' when fine): missing from an image, or cut short.

    Walks the remaining element headers, seeking over every value (vendor groups and enhanced
    functional groups can be most of the file), until PixelData; then checks its value fits.
    """
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    if syntax == "1.2.840.10008.1.2.2":
        return ""  # big endian (retired): left to dcm2niix
    if _pixels_end_the_file(fh, ds, size, implicit=syntax == "1.2.840.10008.1.2"):
        return ""  # the usual layout, seen from the end: no need to walk the header
    implicit = syntax == "1.2.840.10008.1.2"
    while len(head := fh.read(8)) == 8:
        group, element = struct.unpack("<HH", head[:4])
        if group == 0xFFFE:  # item or delimiter: no VR, 4-byte length
            (length,) = struct.unpack("<I", head[4:])
            if element == 0xE000 and length != UNDEFINED:
                fh.seek(length, 1)
            continue
        vr = b"" if implicit else head[4:6]
        if implicit:
            (length,) = struct.unpack("<I", head[4:])
        elif vr in _LONG_VRS:
            (length,) = struct.unpack("<I", fh.read(4))
        else:
            (length,) = struct.unpack("<H", head[6:])
        tag = (group << 16) | element
        if tag == PIXEL_DATA:
            if length == UNDEFINED:  # encapsulated: fragments are dcm2niix's to check
                return ""
            return "pixel data truncated" if fh.tell() + length > size else ""
        if length != UNDEFINED:
            fh.seek(length, 1)  # an undefined length is a sequence: walk into its items
    is_image = "Rows" in ds or str(ds.SOPClassUID) in IMAGE_CLASSES
    return "pixel data missing" if is_image else ""


def _bad_value(vr: str, value: str) -> bool:
    if not value:
        return False
    if vr == "DA":
        try:
            datetime.strptime(value, "%Y%m%d")
        except ValueError:
            return True
        return False
    if vr == "TM":
        return not _TM.match(value)
    return not _DT.match(value)


def _raw_elements(ds: pydicom.Dataset) -> Iterator[tuple[BaseTag, str | None, object]]:
    """(tag, VR, value) of each top-level element without converting values (most are unused)."""
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        if raw is not None:
            yield tag, raw.VR, raw.value


def _bad_dates(ds: pydicom.Dataset) -> list[BaseTag]:
    """One pass over the elements as read: the DA/TM/DT values heudiconv cannot parse (e.g.
    '***'); a damaged element header (an unknown VR) makes the whole file corrupt (ValueError).

    Only the header part staging reads (groups up to 0028: study, series, acquisition, content
    and birth dates and times) is checked: that is where heudiconv parses dates. An implicit-VR
    file's elements carry no VR: the dictionary's is used.
    """
    bad = []
    for tag, vr, value in _raw_elements(ds):
        if vr is None and not tag.is_private:
            with contextlib.suppress(KeyError):
                vr = dictionary_VR(tag)
        elif vr is not None and vr not in _KNOWN_VRS:
            raise ValueError(f"unknown VR in {tag}")
        if vr not in ("DA", "TM", "DT") or value is None:
            continue
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        if any(_bad_value(vr, v.strip(" \x00")) for v in text.split("\\")):
            bad.append(tag)
    return bad


def _repair_dates(ds: pydicom.Dataset) -> bool:
    """Blank the dates `_bad_dates` finds; True when any was."""
    bad = _bad_dates(ds)
    for tag in bad:
        ds[tag].value = ""
    return bool(bad)
