"""What de-identification does, as data and pure functions: profiles and the date policy.

Profiles say which sidecar keys and TSV columns are removed, shifted or kept.

A profile is data, one row per field, read by ``bidsapp.privacy.deid``. ``basic`` follows the DICOM
PS3.15 Basic Application Level Confidentiality Profile (Table E.1-1) for the attributes dcm2niix
and heudiconv carry into BIDS sidecars and TSVs, with the Clean Descriptors option for the
descriptions people and heuristics read. Whatever a profile does not remove is still checked:
any value holding an identifier of the exam is blanked.

A field is a sidecar key, ``tsv:<column>`` for a TSV column, or a shell-style pattern of either
(``*UID``); the first row that matches wins, and a key no row matches is kept (and checked).

Dates move by a whole number of days derived from the label with a secret kept beside the subject
map (an HMAC): intervals and times of day survive, every session, rerun and machine gets the same
offset for a label, and nothing but the secret (never written to OUTPUT) reveals it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from loguru import logger

from bidsapp.errors import UsageError

DATE_MODES = ("keep", "shift", "drop")
REMOVE = "remove"
SHIFT_DATE = "shift-date"  # what happens to a date follows --dates (keep, shift or drop)
KEEP = "keep"
ACTIONS = (REMOVE, SHIFT_DATE, KEEP)
# 110 years back puts any acquisition from 2000 to 2035 at or before 1925, as BIDS recommends for
# shifted dates; ten more years of spread keep the offset from being guessed from the year alone.
BASE_DAYS = (dt.date(2110, 1, 1) - dt.date(2000, 1, 1)).days
SPREAD_DAYS = 3653
MIN_SECRET_BYTES = 16
# YYYY-MM-DD or YYYYMMDD, then nothing, a time ("T..." or " ...") or DICOM DT digits
_DATE_VALUE = re.compile(r"(\d{4})(-?)(\d{2})\2(\d{2})((?:[T ]|\d{2}).*)?", re.S)


@dataclass(frozen=True)
class Rule:
    """One row of a profile: a field (or pattern), what to do with it, and why."""

    field: str
    action: str
    reason: str


_INSTITUTION = "PS3.15 basic: institution identity"
_DEVICE = "PS3.15 basic: identifies the scanner, hence the site"
_PERSON = "PS3.15 basic: names a person other than the patient"
_PATIENT = "PS3.15 basic: patient identity"
_TRAITS = "PS3.15 basic: patient characteristic (opt in with --participant-fields)"
_LINK = "PS3.15 basic: links back to the source exam"
_DATE = "PS3.15 basic: date (per --dates; times of day kept)"
_CLEAN = "PS3.15 Clean Descriptors: kept, blanked when it holds an identifier"

_BASIC: tuple[tuple[str, str, str], ...] = (
    ("InstitutionName", REMOVE, _INSTITUTION),
    ("InstitutionAddress", REMOVE, _INSTITUTION),
    ("InstitutionalDepartmentName", REMOVE, _INSTITUTION),
    ("StationName", REMOVE, _DEVICE),
    ("DeviceSerialNumber", REMOVE, _DEVICE),
    ("OperatorsName", REMOVE, _PERSON),
    ("ReferringPhysicianName", REMOVE, _PERSON),
    ("PerformingPhysicianName", REMOVE, _PERSON),
    ("PhysiciansOfRecord", REMOVE, _PERSON),
    ("RequestingPhysician", REMOVE, _PERSON),
    ("NameOfPhysiciansReadingStudy", REMOVE, _PERSON),
    ("PatientName", REMOVE, _PATIENT),
    ("PatientID", REMOVE, _PATIENT),
    ("OtherPatientIDs", REMOVE, _PATIENT),
    ("PatientBirthDate", REMOVE, _PATIENT),
    ("PatientComments", REMOVE, _PATIENT),
    ("PatientSex", REMOVE, _TRAITS),
    ("PatientAge", REMOVE, _TRAITS),
    ("PatientWeight", REMOVE, _TRAITS),
    ("PatientSize", REMOVE, _TRAITS),
    ("AccessionNumber", REMOVE, _LINK),
    ("StudyID", REMOVE, _LINK),
    ("*UID", REMOVE, _LINK),  # StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, ...
    ("AcquisitionDateTime", SHIFT_DATE, _DATE),
    ("AcquisitionDate", SHIFT_DATE, _DATE),
    ("StudyDate", SHIFT_DATE, _DATE),
    ("SeriesDate", SHIFT_DATE, _DATE),
    ("ContentDate", SHIFT_DATE, _DATE),
    ("*Date", SHIFT_DATE, _DATE),
    ("*DateTime", SHIFT_DATE, _DATE),
    ("StudyDescription", KEEP, _CLEAN),
    ("SeriesDescription", KEEP, _CLEAN + " (heuristics and curators read it)"),
    ("ProtocolName", KEEP, _CLEAN + " (heuristics and curators read it)"),
    ("ProcedureStepDescription", KEEP, _CLEAN),
    ("ImageComments", KEEP, _CLEAN + " (vendors note e.g. multiband or phase here)"),
    ("tsv:acq_time", SHIFT_DATE, _DATE),
    ("tsv:operator", REMOVE, _PERSON + " (heudiconv: PerformingPhysicianName)"),
    ("tsv:randstr", REMOVE, "heudiconv bookkeeping; undefined column the validator warns about"),
)

# sourcedata DICOM copies: PS3.15 basic removes these, which dicognito leaves in place
DICOM_REMOVE: tuple[str, ...] = (
    "DeviceSerialNumber",
    "PatientAge",
    "PatientWeight",
    "PatientSize",
    "EthnicGroup",
    "AdditionalPatientHistory",
    "PatientComments",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "SmokingStatus",
    "PatientAddress",
    "PatientMotherBirthName",
    "PatientBirthName",
    "PatientBirthTime",
    "CountryOfResidence",
    "RegionOfResidence",
    "OtherPatientNames",
)

PROFILES: dict[str, tuple[Rule, ...]] = {
    "basic": tuple(Rule(*row) for row in _BASIC),
}


def profile(name: str = "basic") -> tuple[Rule, ...]:
    """The rules of a named profile; an unknown name is a usage error."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UsageError(
            f"unknown de-identification profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None


def rule_for(rules: tuple[Rule, ...], field: str) -> Rule | None:
    """The first rule whose field (or pattern) matches, or None (kept, still checked)."""
    for rule in rules:
        if rule.field == field or fnmatchcase(field, rule.field):
            return rule
    return None


def load_secret(path: Path) -> bytes:
    """The date-shift secret kept beside the subject map; created (0600) on first use."""
    if not path.exists():
        try:
            _create_secret(path)
        except OSError as exc:
            raise UsageError(
                f"cannot create the date-shift secret {path}: {exc.strerror or exc}",
                hint="make that folder writable once, or pass --date-secret FILE "
                "(a file of 64 hex digits, e.g. from 'openssl rand -hex 32')",
            ) from exc
    if path.stat().st_mode & 0o077:
        logger.warning("the date-shift secret {} is readable by others: chmod 600 it", path.name)
    text = path.read_bytes().strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = text  # a secret the user wrote themselves
    if len(secret) < MIN_SECRET_BYTES:
        raise UsageError(
            f"the date-shift secret {path.name} is shorter than {MIN_SECRET_BYTES} bytes"
        )
    return secret


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # 0600 from the start
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
        os.link(tmp, path)  # atomic: parallel jobs never read a half-written secret
    except FileExistsError:
        pass  # another job made it first: everyone uses that one
    finally:
        os.unlink(tmp)


def date_offset(label: str, secret: bytes) -> int:
    """Days to add to every date of this label (negative), the same wherever and whenever run."""
    if len(secret) < MIN_SECRET_BYTES:
        raise UsageError("the date-shift secret is missing or too short")
    digest = hmac.new(secret, label.removeprefix("sub-").encode(), hashlib.sha256).digest()
    return -(BASE_DAYS + int.from_bytes(digest[:8], "big") % SPREAD_DAYS)


def dicom_seed(label: str, secret: bytes) -> str:
    """A dicognito seed for this label, so UIDs and fake names are stable across reruns."""
    return hmac.new(secret, b"dicom\0" + label.removeprefix("sub-").encode(), "sha256").hexdigest()


def shift_date(text: str, days: int) -> str | None:
    """The date at the start of text moved by whole days, the rest kept; None if not a date."""
    match = _DATE_VALUE.fullmatch(text.strip())
    if not match:
        return None
    try:
        day = dt.date(int(match[1]), int(match[3]), int(match[4])) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return None
    sep = match[2]
    return f"{day.year:04d}{sep}{day.month:02d}{sep}{day.day:02d}{match[5] or ''}"


def check_dates(dates: str, offset_days: int) -> None:
    """A usage error for an unknown mode, or for shift without a real (negative) offset."""
    if dates not in DATE_MODES:
        raise UsageError(f"unknown --dates {dates!r}; expected one of {', '.join(DATE_MODES)}")
    if dates == "shift" and offset_days >= 0:  # a zero shift would publish the real dates
        raise UsageError("dates=shift needs the negative offset from date_offset()")
