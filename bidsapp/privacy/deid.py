"""De-identification of a converted subject tree, between convert and gate.

Sidecars, TSVs and NIfTI header text are rewritten in place by a named profile; any value left
that holds an identifier of the exam is blanked. What to remove and how dates move (per label, by
an HMAC of a secret) is data and pure functions in ``bidsapp.privacy.profiles``, re-exported here.
The optional sourcedata DICOM copy goes through dicognito; faces through the user's own command.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from dicognito.fixedvalueanonymizer import FixedValueAnonymizer
from dicognito.unwantedelements import UnwantedElementsStripper
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from bidsapp.errors import BadInputData, UsageError
from bidsapp.files import rewrite
from bidsapp.privacy.phi import HEADER_FIELDS, Identifiers
from bidsapp.privacy.profiles import (
    DATE_MODES,
    DICOM_REMOVE,
    KEEP,
    REMOVE,
    SHIFT_DATE,
    Rule,
    check_dates,
    date_offset,
    dicom_seed,
    load_secret,
    profile,
    rule_for,
    shift_date,
)
from bidsapp.tools import ToolFailed, run

__all__ = ["DATE_MODES", "DeidReport", "Rule", "date_offset", "deface", "deface_template"]
__all__ += ["deidentify"]
__all__ += ["deidentify_dicoms", "dicom_seed", "load_secret", "profile", "shift_date"]

NA = "n/a"
DEFACE_TIMEOUT = 3600.0
ANAT_SUFFIXES = ("T1w", "T2w", "FLAIR", "PDw", "PDT2", "T2starw", "inplaneT1", "inplaneT2", "UNIT1")
_NIFTI_TEXT = ("descrip", "aux_file", "intent_name", "db_name", "data_type", "unused_str")


@dataclass
class DeidReport:
    """PHI-free summary for the GateReport: field names and counts, never values or the offset."""

    removed: dict[str, int] = field(default_factory=dict)
    blanked: dict[str, int] = field(default_factory=dict)
    dates: str = "shift"
    files_changed: int = 0
    defaced: list[str] = field(default_factory=list)
    profile: str = "basic"
    shifted: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data, fields sorted."""
        return {
            "profile": self.profile,
            "dates": self.dates,
            "files_changed": self.files_changed,
            "removed": dict(sorted(self.removed.items())),
            "blanked": dict(sorted(self.blanked.items())),
            "shifted": dict(sorted(self.shifted.items())),
            "defaced": sorted(self.defaced),
        }


# --- the converted tree -----------------------------------------------------------------------


def deidentify(
    subject_dir: Path,
    ids: Identifiers,
    *,
    profile_name: str = "basic",
    dates: str = "shift",
    offset_days: int = 0,
) -> DeidReport:
    """Rewrite sidecars, TSVs and NIfTI header text under a subject dir in place."""
    rules = profile(profile_name)
    check_dates(dates, offset_days)
    job = _TreeJob(rules, ids, dates, offset_days, DeidReport(dates=dates, profile=profile_name))
    for path in sorted(p for p in subject_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.name.lower()
        if name.endswith(".json"):
            job.report.files_changed += job.json_file(path, subject_dir)
        elif name.endswith(".tsv"):
            job.report.files_changed += job.tsv_file(path)
        elif name.endswith((".nii", ".nii.gz")):
            job.report.files_changed += job.nifti_file(path)
    return job.report


def _variants(text: str) -> Iterator[str]:
    yield text
    try:  # dcm2niix writes UTF-8 names as mojibake ("JoÃ£o"), which hides them from the matcher
        fixed = text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return
    if fixed != text:
        yield fixed


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _count(counts: dict[str, int], key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


@dataclass
class _TreeJob:
    rules: tuple[Rule, ...]
    ids: Identifiers
    dates: str
    offset: int
    report: DeidReport

    def holds_id(self, text: str) -> bool:
        return any(self.ids.find(t) for t in _variants(text))

    def date(self, value: object, where: str) -> str | None:
        """The value shifted, or None when it is to go (dropped, or no date to shift)."""
        shifted = shift_date(value, self.offset) if isinstance(value, str) else None
        if self.dates == "drop" or shifted is None:  # what cannot be shifted cannot be kept
            _count(self.report.removed, where)
            return None
        _count(self.report.shifted, where)
        return shifted

    def json_file(self, path: Path, subject_dir: Path) -> bool:
        try:
            data = json.loads(_decode(path.read_bytes()))
        except ValueError:  # fail closed: a sidecar we cannot read could leak anything
            rel = self.ids.redact(path.relative_to(subject_dir.parent).as_posix())
            raise BadInputData(f"{rel} is not valid JSON and cannot be de-identified") from None
        clean = self.json_value("(root)", data)
        if clean == data:
            return False
        rewrite(path, (json.dumps(clean, indent=2, ensure_ascii=False) + "\n").encode())
        return True

    def json_value(self, key: str, value: Any) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for name, item in value.items():
                rule = rule_for(self.rules, name)
                action = rule.action if rule else KEEP
                if action == REMOVE:
                    _count(self.report.removed, name)
                    continue
                dated = action == SHIFT_DATE and self.dates != "keep"
                if dated and (item := self.date(item, name)) is None:
                    continue
                out[name] = self.json_value(name, item)
            return out
        if isinstance(value, list):
            return [self.json_value(key, item) for item in value]
        if value is None or isinstance(value, bool) or not self.holds_id(str(value)):
            return value
        _count(self.report.blanked, key)
        return ""

    def tsv_file(self, path: Path) -> bool:
        text = _decode(path.read_bytes())
        rows = [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]
        if not rows:
            return False
        header, keep = rows[0], []
        for index, column in enumerate(header):
            rule = rule_for(self.rules, f"tsv:{column}")
            if (rule and rule.action == REMOVE) or self.holds_id(column):
                _count(self.report.removed, f"tsv:{column}" if rule else f"tsv:#{index + 1}")
            else:
                keep.append(index)
        out = [[header[i] for i in keep]]
        for row in rows[1:]:
            out.append([self.tsv_cell(header[i], row[i]) for i in keep if i < len(row)])
        new = "".join("\t".join(cells) + "\n" for cells in out)
        if new == text:
            return False
        rewrite(path, new.encode())
        return True

    def tsv_cell(self, column: str, cell: str) -> str:
        rule = rule_for(self.rules, f"tsv:{column}")
        dated = rule is not None and rule.action == SHIFT_DATE and self.dates != "keep"
        if dated and cell not in (NA, ""):
            cell = self.date(cell, f"tsv:{column}") or NA
        if not cell:
            return NA  # an empty cell is invalid in BIDS (heudiconv leaves acq_time empty)
        if cell != NA and self.holds_id(cell):
            _count(self.report.blanked, f"tsv:{column}")
            return NA
        return cell

    def nifti_file(self, path: Path) -> bool:
        gz = path.name.lower().endswith(".gz")
        # header and extensions only: a clean image (the usual case) is never decompressed whole
        with gzip.open(path, "rb") if gz else path.open("rb") as stream:
            head = stream.read(544)
            endian = "<" if struct.unpack("<i", head[:4])[0] in (348, 540) else ">"
            size = struct.unpack(f"{endian}i", head[:4])[0]
            kind: Any = nib.Nifti2Header if size == 540 else nib.Nifti1Header
            header = kind(binaryblock=head[:size], check=False)
            vox_offset = int(header["vox_offset"])
            head += stream.read(max(vox_offset - len(head), 0))
        changed = False
        for key in _NIFTI_TEXT:
            if key in (header.structarr.dtype.names or ()):
                value = np.asarray(header.structarr[key]).item()
                if self.holds_id(_decode(value).rstrip("\0")):
                    header.structarr[key] = b""
                    _count(self.report.blanked, f"nifti:{key}")
                    changed = True
        rest = bytearray(head[size:])
        changed |= self.nifti_extensions(rest, endian, vox_offset - size)
        if not changed:
            return False
        # the header is patched in place so the image data stays byte for byte the same
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        new = header.binaryblock + bytes(rest) + raw[len(head) :]
        rewrite(path, gzip.compress(new, compresslevel=6, mtime=0) if gz else new)
        return True

    def nifti_extensions(self, rest: bytearray, endian: str, end: int) -> bool:
        """Neutralise (code 0, zeroed) any header extension that holds an identifier."""
        if len(rest) < 4 or rest[0] == 0:
            return False
        changed, pos, end = False, 4, end if end > 0 else len(rest)
        while pos + 8 <= min(end, len(rest)):
            esize, _code = struct.unpack_from(f"{endian}ii", rest, pos)
            if esize < 8:
                break
            if self.holds_id(bytes(rest[pos + 8 : pos + esize]).decode("latin-1")):
                struct.pack_into(f"{endian}i", rest, pos + 4, 0)
                rest[pos + 8 : pos + esize] = bytes(esize - 8)
                _count(self.report.blanked, "nifti:extension")
                changed = True
            pos += esize
        return changed


# --- sourcedata DICOM copies ------------------------------------------------------------------

_DICOMDIR = "1.2.840.10008.1.3.10"
_TEXT_VRS = frozenset(
    ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"]
)


class _Dates(ElementAnonymizer):
    """DA/DT under --dates with our offset: dicognito's own shift is random per run."""

    def __init__(self, dates: str, offset_days: int) -> None:
        self.dates, self.offset = dates, offset_days

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        if data_element.VR not in ("DA", "DT"):
            return False
        if data_element.keyword == "PatientBirthDate" or self.dates == "drop":
            data_element.value = ""
        elif self.dates == "shift" and data_element.value:
            values = data_element.value if data_element.VM > 1 else [data_element.value]
            texts = [str(v) for v in values]
            if data_element.VR == "DA":  # ACR-NEMA's YYYY.MM.DD; in a DT a dot starts the fraction
                texts = [t.replace(".", "") for t in texts]
            new = [shift_date(t, self.offset) or "" for t in texts]
            data_element.value = new if len(new) > 1 else new[0]
        return True

    def describe_actions(self) -> Iterator[str]:
        yield f"Dates ({self.dates}); PatientBirthDate emptied"


def deidentify_dicoms(
    src_dir: Path,
    dest_dir: Path,
    *,
    offset_days: int,
    dates: str,
    seed: str | None = None,
    ids: Identifiers | None = None,
) -> int:
    """De-identified copies of the DICOM files under src_dir, as dest_dir/NNNNNN.dcm.

    dicognito replaces names, IDs, institution and UIDs (consistently within the call, and across
    calls given the same ``seed``); dates follow ``dates``/``offset_days``; any text left that
    holds an identifier of these files (or of ``ids``) is emptied. Pixel data is untouched.
    """
    check_dates(dates, offset_days)
    files, headers = [], []
    for path in sorted(p for p in src_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue  # not DICOM: not copied
        classes = {ds.get("SOPClassUID"), ds.file_meta.get("MediaStorageSOPClassUID")}
        if _DICOMDIR not in classes:  # a DICOMDIR's records point at the original file names
            files.append(path)
            headers.append({f: ds.get(f) for f in HEADER_FIELDS})
    found = Identifiers.collect(headers, None)
    found = found.merge(ids) if ids is not None else found
    anonymizer = Anonymizer(seed=seed)
    for handler in (
        UnwantedElementsStripper(*DICOM_REMOVE),
        FixedValueAnonymizer("PatientSex", ""),
        _Dates(dates, offset_days),
    ):
        anonymizer.add_element_handler(handler)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(files, 1):
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        _empty_identifiers(ds, lambda text: any(found.find(t) for t in _variants(text)))
        ds.save_as(dest_dir / f"{number:06d}.dcm")
    return len(files)


def _empty_identifiers(ds: Dataset, holds_id: Callable[[str], bool]) -> None:
    """Empty text elements (remove private binary ones) that hold an identifier, at any depth."""
    hits: list[tuple[Dataset, DataElement]] = []

    def visit(dataset: Dataset, elem: DataElement) -> None:
        value = elem.value
        if isinstance(value, bytes) and (elem.VR in _TEXT_VRS | {"UN"} or elem.tag.is_private):
            text = value.decode("latin-1")
        elif elem.VR in _TEXT_VRS and value is not None:
            text = "\\".join(map(str, value)) if elem.VM > 1 else str(value)
        else:
            return
        if holds_id(text):
            hits.append((dataset, elem))

    for part in (ds.file_meta, ds):
        part.walk(visit)
    for dataset, elem in hits:
        if elem.VR in _TEXT_VRS:
            elem.value = ""
        else:
            del dataset[elem.tag]


# --- faces ------------------------------------------------------------------------------------


def anatomical_images(subject_dir: Path) -> list[Path]:
    """The structural NIfTI images under subject_dir (any session), sorted."""
    images = []
    for path in subject_dir.rglob("*.nii*"):
        stem = path.name.removesuffix(".gz").removesuffix(".nii")
        if path.parent.name == "anat" and stem.rsplit("_", 1)[-1] in ANAT_SUFFIXES:
            images.append(path)
    return sorted(images)


def deface_template(command: str) -> list[str]:
    """The defacing command as words; a usage error when it cannot be run as given."""
    try:
        template = shlex.split(command)
    except ValueError as exc:  # an unbalanced quote
        raise UsageError(f"--deface-cmd cannot be read: {exc}", hint="check its quotes") from None
    if not any("{in}" in a for a in template) or not any("{out}" in a for a in template):
        raise UsageError("--deface-cmd needs {in} and {out}, e.g. 'pydeface {in} --outfile {out}'")
    return template


def deface(subject_dir: Path, command: str) -> list[str]:
    """Run the user's defacing command ({in} and {out} placeholders) on every anatomical image."""
    template = deface_template(command)
    done = []
    for image in anatomical_images(subject_dir):
        rel = image.relative_to(subject_dir.parent).as_posix()
        # beside the subject (same file system, 0700), never inside it where it could be published
        with tempfile.TemporaryDirectory(prefix=".deface-", dir=subject_dir.parent) as tmp:
            out = Path(tmp) / image.name
            argv = [a.replace("{in}", str(image)).replace("{out}", str(out)) for a in template]
            try:
                run(argv, timeout=DEFACE_TIMEOUT)
            except ToolFailed as exc:
                raise BadInputData(
                    f"defacing {rel} failed: {Path(template[0]).name} exited with {exc.code}",
                    hint="check --deface-cmd on this image",
                ) from exc
            except subprocess.TimeoutExpired as exc:
                raise BadInputData(f"defacing {rel} timed out", hint="check --deface-cmd") from exc
            if not out.is_file() or out.stat().st_size == 0:
                raise BadInputData(f"defacing {rel} wrote no output", hint="check --deface-cmd")
            mode = stat.S_IMODE(image.stat().st_mode)
            os.replace(out, image)
            image.chmod(mode)
        done.append(rel)
    return done
