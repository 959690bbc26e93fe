"""Patient identifiers (PHI): collect from DICOM headers, find and redact in text and files.

Matching is on normalized tokens (case, accents and separators do not matter). Besides each
value as written, the forms people write it in are identifiers too: the name's parts, its short
parts when they stand together, its parts run together (JoaoConceicao), the birth date in the
common written orders (12/03/1975, 1975.03.12, 12 Mar 1975…). IDs of 6 or more characters with
a digit also match inside a longer token (JC778899x), unless that would extend a number
(778899 inside 17788990 is another number). Values that identify no one are reported (field and
reason, never the value) rather than silently dropped, so the GateReport shows what was not
checked. What `find` reports, `redact` removes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

REDACTED = "[REDACTED]"
FOLDER_FIELD = "ExamFolder"
HEADER_FIELDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "AccessionNumber",
)
_FIELD_ORDER = {f: i for i, f in enumerate((*HEADER_FIELDS, FOLDER_FIELD))}
ID_FIELDS = ("PatientID", "OtherPatientIDs", "AccessionNumber")
MIN_CHARS = 3
MIN_INSIDE = 6  # an ID this long (with a digit) also matches inside a longer token
MAX_NAME_TOKENS = 6  # name tokens combined into pairs and run-together forms
VALUE, PART, FORM = "value", "part", "form"
# English month names, as written in dates ("12 Mar 1975"); not the locale's
_MONTHS = (
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    (
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ),
)

EMPTY = "empty"
NO_ALNUM = "no letters or digits (placeholder)"
PLACEHOLDER = "anonymisation placeholder"
COMMON_WORD = "common word"
TOO_SHORT = "too short to identify (<3 characters)"
IS_LABEL = "folder name is the participant label"


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_PLACEHOLDERS = _words(
    "anonymous anon anonym anonyme anonymized anonymised anonymize anonymise anonimo anonimizado"
    " anonimizada deidentified deid identified removed redacted unknown unk desconhecido none null"
    " nil na nan blank empty noname missing masked hidden withheld confidential private default"
    " dummy placeholder 19000101"
)
_PLACEHOLDER_PHRASES = frozenset({"n a", "not available", "not applicable", "no name", "de id"})
# Words used in folder names and test data that say nothing about a person; BIDS entity keys are
# here because an exam folder named "sub-01_ses-1" must not turn "sub" into an identifier.
_COMMON_WORDS = _words(
    "dicom dcm dicomdir test tests testing teste phantom patient patients paciente subject subjects"
    " sujeito sub ses session run acq task study studies estudo series exam exams exame scan scans"
    " image images data raw mri brain head research volunteer demo sample example pilot qa qc"
)

_ASCII_TOKEN = re.compile(r"[0-9a-z]+")
_NAME_PARTS = re.compile(r"[\^\s]+")
_TEXT_SUFFIXES = _words(
    ".txt .log .jsonl .html .htm .md .rst .bval .bvec .csv .err .out .xml .yaml .yml .cfg .ini"
    " .toml"
)
_TEXT_NAMES = frozenset({"readme", "changes", "license", ".bidsignore"})
_NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type", "unused_str")


class HeaderLike(Protocol):
    """Anything with ``.get(keyword)``: a dict of DICOM keywords or a pydicom Dataset."""

    def get(self, key: str, /) -> object: ...


def normalize(text: str) -> str:
    """NFKD, strip combining marks, casefold: ``"JOÃO"`` -> ``"joao"``."""
    # casefold can reintroduce composed characters (e.g. U+0130), hence the second NFKD.
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(c for c in folded if not unicodedata.combining(c))


@lru_cache(maxsize=4096)
def _norm_char(ch: str) -> str:
    return normalize(ch)


def _token_spans(text: str) -> list[tuple[str, int, int]]:
    """Normalized alphanumeric runs with their character span in the original text."""
    if text.isascii():  # fast path for log lines; lower() keeps offsets for ASCII
        return [(m.group(), m.start(), m.end()) for m in _ASCII_TOKEN.finditer(text.lower())]
    out: list[tuple[str, int, int]] = []
    buf: list[str] = []
    start = end = 0
    for i, ch in enumerate(text):
        norm = _norm_char(ch)
        if not norm:  # a decomposed accent belongs to the token it follows
            if buf:
                end = i + 1
            continue
        for c in norm:
            if c.isalnum():  # Unicode letters too, so non-Latin names still make tokens
                if not buf:
                    start = i
                buf.append(c)
                end = i + 1
            elif buf:
                out.append(("".join(buf), start, end))
                buf = []
    if buf:
        out.append(("".join(buf), start, end))
    return out


def _readings(text: str) -> list[str]:
    """The text, plus its repair when UTF-8 was decoded as Latin-1 somewhere upstream.

    dcm2niix writes UTF-8 names that way ("GonÃ§alves" for "Gonçalves"): the garbled form must
    match the name too.
    """
    if text.isascii():
        return [text]
    try:
        repaired = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        try:
            repaired = text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return [text]
    return [text, repaired] if repaired != text else [text]


def tokenize(text: str) -> tuple[str, ...]:
    """Normalized alphanumeric runs: ``"Doe^João-2"`` -> ``("doe", "joao", "2")``."""
    return tuple(t for t, _, _ in _token_spans(text))


@dataclasses.dataclass(frozen=True)
class Identifier:
    """A token sequence that identifies the patient; repr hides the tokens.

    `kind` is how it was derived: the value as written, a part of a name, or another written
    form of a value (a pair of short name parts, parts run together, a date order, an ID's
    tokens joined). Only `value` and `part` are listed in the GateReport; forms are counted.
    """

    field: str
    tokens: tuple[str, ...] = dataclasses.field(repr=False)
    kind: str = VALUE

    @property
    def name_word(self) -> bool:
        """A single word of the patient's name (not the whole name): it may also be a word of
        bidsapp's own text, where it says nothing about the patient."""
        return self.field == "PatientName" and self.kind != VALUE and len(self.tokens) == 1


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A field value not treated as an identifier, with why (never the value)."""

    field: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Hit:
    """An identifier found: field, redacted relative path, and where in the file."""

    field: str
    file: str
    where: str


def _field_key(name: str) -> tuple[int, str]:
    return _FIELD_ORDER.get(name, len(_FIELD_ORDER)), name


def _why_not(tokens: tuple[str, ...]) -> str | None:
    """Reason the tokens identify no one, or None if at least one token is meaningful."""
    if not tokens:
        return NO_ALNUM
    if " ".join(tokens) in _PLACEHOLDER_PHRASES:
        return PLACEHOLDER
    reasons = set()
    for tok in tokens:
        if tok in _PLACEHOLDERS or (len(tok) >= MIN_CHARS and len(set(tok)) == 1):
            reasons.add(PLACEHOLDER)  # "xxx", "0000" too
        elif tok in _COMMON_WORDS:
            reasons.add(COMMON_WORD)
        elif len(tok) < MIN_CHARS:
            reasons.add(TOO_SHORT)
        else:
            return None
    return next(r for r in (PLACEHOLDER, COMMON_WORD, TOO_SHORT) if r in reasons)


def _as_strings(value: object) -> list[str]:
    """Header value as strings: None, str, bytes, PersonName, MultiValue/list are all accepted."""
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value.decode("utf-8", "replace")]
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [s for v in value for s in _as_strings(v)]
    return [str(value)]  # PersonName, pydicom DA, numbers


class Identifiers:
    """The identifiers of one exam (or several, merged), indexed for fast find/redact."""

    def __init__(
        self, identifiers: Iterable[Identifier] = (), ignored: Iterable[Ignored] = ()
    ) -> None:
        ids: dict[tuple[str, tuple[str, ...]], Identifier] = {}
        for ident in identifiers:
            key = (ident.field, ident.tokens)
            known = ids.get(key)
            # a value as written outranks the same tokens as a part or form (never exempted)
            if ident.tokens and (known is None or _KINDS[ident.kind] < _KINDS[known.kind]):
                ids[key] = ident
        # longest sequences first so the order is stable and independent of header order
        self.identifiers: tuple[Identifier, ...] = tuple(
            sorted(
                ids.values(),
                key=lambda i: (_field_key(i.field), _KINDS[i.kind], -len(i.tokens), i.tokens),
            )
        )
        self.ignored: tuple[Ignored, ...] = tuple(
            sorted(set(ignored), key=lambda i: (_field_key(i.field), i.reason))
        )
        self._index: dict[str, list[Identifier]] = {}
        inside: dict[str, str] = {}
        for ident in self.identifiers:
            self._index.setdefault(ident.tokens[0], []).append(ident)
            joined = ident.tokens[0]
            if ident.field in ID_FIELDS and len(ident.tokens) == 1 and _inside_ok(joined):
                inside.setdefault(joined, ident.field)
        self._inside = inside
        self._inside_min = min(map(len, inside), default=0)
        self._inside_re = (
            re.compile(
                "|".join(_inside_pattern(i) for i in sorted(inside, key=lambda t: (-len(t), t)))
            )
            if inside
            else None
        )

    def __repr__(self) -> str:
        return f"Identifiers({len(self.identifiers)} identifiers, {len(self.ignored)} ignored)"

    @classmethod
    def collect(
        cls,
        headers: Iterable[HeaderLike],
        exam_folder: str | None,
        label: str | None = None,
    ) -> Identifiers:
        """Identifiers from DICOM headers (dicts or pydicom Datasets) and the exam folder's name."""
        found: list[Identifier] = []
        ignored: list[Ignored] = []
        values: list[tuple[str, str]] = []
        for header in headers:
            for field in HEADER_FIELDS:
                given = [v for v in _as_strings(header.get(field)) if v.strip(" \0^=")]
                values += [(field, v) for v in given]
                ignored += [] if given else [Ignored(field, EMPTY)]
        if exam_folder is not None:
            if label is not None and tokenize(exam_folder) in _label_forms(label):
                ignored.append(Ignored(FOLDER_FIELD, IS_LABEL))
            else:
                values.append((FOLDER_FIELD, exam_folder))
        for field, raw in values:
            for tokens, what in _candidates(field, raw):
                reason = _why_not(tokens) if raw.strip() else EMPTY
                if reason is None:
                    found.append(Identifier(field, tokens, PART if what else VALUE))
                elif (
                    reason == TOO_SHORT and field == "PatientName" and not what and len(tokens) > 1
                ):
                    found.append(Identifier(field, tokens))  # short parts together: a name
                else:
                    ignored.append(Ignored(field, what + reason))
            found += _forms(field, raw)
        return cls(found, ignored)

    def merge(self, other: Identifiers) -> Identifiers:
        """Union of both (e.g. several exams of one subject)."""
        return Identifiers(self.identifiers + other.identifiers, self.ignored + other.ignored)

    def except_words(self, words: frozenset[str]) -> Identifiers:
        """These identifiers less the single name words that are also in `words` (bidsapp's
        own fixed text): for scanning text bidsapp generates, where such a word is its own."""
        kept = [i for i in self.identifiers if not (i.name_word and i.tokens[0] in words)]
        return Identifiers(kept, self.ignored)

    def name_words(self) -> frozenset[str]:
        """The single name words (normalized tokens) among the identifiers."""
        return frozenset(i.tokens[0] for i in self.identifiers if i.name_word)

    def name_words_in(self, words: frozenset[str]) -> int:
        """How many single name words are also in `words` (for the GateReport, no values)."""
        return sum(i.name_word and i.tokens[0] in words for i in self.identifiers)

    def _matches(self, tokens: tuple[str, ...]) -> Iterator[tuple[int, int, str]]:
        inside, shortest = self._inside_re, self._inside_min
        for i, tok in enumerate(tokens):
            for ident in self._index.get(tok, ()):
                end = i + len(ident.tokens)
                if tokens[i:end] == ident.tokens:
                    yield i, end, ident.field
            if inside is not None and len(tok) > shortest:
                match = inside.search(tok)
                if match is not None:
                    yield i, i + 1, self._inside[match.group()]

    def find(self, text: str) -> list[str]:
        """Field names of the identifiers occurring (as whole tokens) in text."""
        if not self._index:
            return []
        fields = {f for variant in _readings(text) for _, _, f in self._matches(tokenize(variant))}
        return sorted(fields, key=_field_key)

    def redact(self, text: str) -> str:
        """Text with every identifier span replaced by [REDACTED]; the rest kept as is."""
        if not self._index:
            return text
        spans = _token_spans(text)
        tokens = tuple(t for t, _, _ in spans)
        found = sorted((spans[i][1], spans[j - 1][2]) for i, j, _ in self._matches(tokens))
        merged: list[list[int]] = []
        for start, end in found:
            if merged and start < merged[-1][1]:  # overlapping matches (whole name and part)
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out: list[str] = []
        pos = 0
        for start, end in merged:
            out += [text[pos:start], REDACTED]
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        """GateReport section: fields and token counts only, never values."""
        forms: dict[str, int] = {}
        for i in self.identifiers:
            if i.kind == FORM:
                forms[i.field] = forms.get(i.field, 0) + 1
        return {
            "identifiers": [
                {"field": i.field, "count_of_tokens": len(i.tokens)}
                for i in self.identifiers
                if i.kind != FORM
            ],
            "other_written_forms": forms,
            "not_treated_as_identifiers": [
                {"field": i.field, "reason": i.reason} for i in self.ignored
            ],
        }


_KINDS = {VALUE: 0, PART: 1, FORM: 2}


def _inside_ok(token: str) -> bool:
    return len(token) >= MIN_INSIDE and any(c.isdigit() for c in token)


def _inside_pattern(token: str) -> str:
    """The ID inside a longer token, but never as a piece of a longer number."""
    before = r"(?<![0-9])" if token[0].isdigit() else ""
    after = r"(?![0-9])" if token[-1].isdigit() else ""
    return before + re.escape(token) + after


def _forms(field: str, raw: str) -> list[Identifier]:
    """Other ways people write this value (see the module docstring)."""
    if field == "PatientName":
        return [f for group in raw.split("=") for f in _name_forms(group)]
    if field == "PatientBirthDate":
        digits = _date_digits(tokenize(raw))
        return [Identifier(field, t, FORM) for t in _date_forms(digits)] if digits else []
    tokens = tokenize(raw)
    if field in ID_FIELDS and len(tokens) > 1 and _why_not(tokens) is None:
        return [Identifier(field, ("".join(tokens),), FORM)]  # JC-778899 written JC778899
    return []


def _name_forms(group: str) -> list[Identifier]:
    """Short parts adjacent in either order, and parts run together (JoaoConceicao)."""
    tokens = [t for t in dict.fromkeys(tokenize(group)) if _why_not((t,)) in (None, TOO_SHORT)]
    tokens = tokens[:MAX_NAME_TOKENS]
    if len(tokens) < 2:
        return []
    out = []
    for a, b in itertools.permutations(tokens, 2):
        if min(len(a), len(b)) < MIN_CHARS:
            out.append(Identifier("PatientName", (a, b), FORM))
        out.append(Identifier("PatientName", (a + b,), FORM))
    # family^given^middle is written given [middle] family, or as in DICOM, run together
    given_first = tokens[1:] + tokens[:1]
    out += [Identifier("PatientName", ("".join(order),), FORM) for order in (tokens, given_first)]
    return [f for f in out if len("".join(f.tokens)) >= MIN_CHARS]


def _date_forms(digits: str) -> list[tuple[str, ...]]:
    """A YYYYMMDD date in the orders and spellings dates are commonly written in."""
    year, month, day = digits[:4], digits[4:6], digits[6:]
    out: list[tuple[str, ...]] = [(digits,), (day + month + year,), (month + day + year,)]
    for m, d in {(month, day), (str(int(month)), str(int(day)))}:
        out += [(year, m, d), (d, m, year), (m, d, year)]
    for names in _MONTHS:
        name = names[int(month) - 1]
        for d in {day, str(int(day))}:
            out += [(d, name, year), (name, d, year), (year, name, d)]
    return out


def _candidates(field: str, raw: str) -> list[tuple[tuple[str, ...], str]]:
    """Token sequences to consider for one value, each with a prefix for its ignore reason."""
    tokens = tokenize(raw)
    if field != "PatientName" or not tokens:
        return [(tokens, "")]
    out = []
    for group in raw.split("="):  # PN groups: alphabetic=ideographic=phonetic
        whole = tokenize(group)
        out += [(whole, "")] if whole else []
        parts = (tokenize(part) for part in _NAME_PARTS.split(group))
        out += [(part, "name part: ") for part in parts if part and part != whole]
    return out


def _date_digits(tokens: tuple[str, ...]) -> str | None:
    """YYYYMMDD if tokens are a real date written as YYYYMMDD or YYYY-MM-DD (any separator)."""
    digits = "".join(tokens)
    if len(digits) != 8 or not digits.isdigit() or len(tokens) not in (1, 3):
        return None
    try:
        dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None  # not a date: matched only as written
    return None if digits in _PLACEHOLDERS else digits


def _label_forms(label: str) -> set[tuple[str, ...]]:
    tokens = tokenize(label)
    if tokens[:1] == ("sub",):
        tokens = tokens[1:]
    return {tokens, ("sub", *tokens)}


# --- scanning a tree --------------------------------------------------------------------------


def scan_tree(root: Path, ids: Identifiers) -> list[Hit]:
    """Hits in folder/file names under root and in the contents of text-like and NIfTI files.

    Unreadable folders or files raise (a gate must fail closed). The root's own name is not
    checked. Symlinked folders are not followed.
    """

    def raise_error(err: OSError) -> None:
        raise err

    hits: set[Hit] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=raise_error):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(root)
        for name in dirnames:
            shown = _redact_path(rel / name, ids)
            hits.update(Hit(f, shown, "folder name") for f in ids.find(name))
        for name in sorted(filenames):
            shown = _redact_path(rel / name, ids)
            hits.update(Hit(f, shown, "file name") for f in ids.find(name))
            hits.update(Hit(f, shown, where) for f, where in _scan_file(base / name, ids))
    return sorted(hits, key=_hit_key)


def _hit_key(hit: Hit) -> tuple[str, int, int, str, str]:
    line = re.fullmatch(r"text line (\d+)", hit.where)
    in_name = hit.where in ("folder name", "file name")
    return hit.file, 0 if in_name else 1, int(line.group(1)) if line else 0, hit.where, hit.field


def _redact_path(rel: Path, ids: Identifiers) -> str:
    # per component, so a match never swallows a "/"
    return "/".join(ids.redact(part) for part in rel.parts)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte maps, so accents in legacy files still match


_DICOM_TEXT_VRS = {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}


def _scan_file(path: Path, ids: Identifiers) -> Iterator[tuple[str, str]]:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        yield from _scan_nifti(path, ids)
    elif name.endswith(".dcm"):
        yield from _scan_dicom(path, ids)
    elif name.endswith(".json"):
        text = _decode(path.read_bytes())
        try:
            data = json.loads(text)
        except ValueError:
            yield from _scan_lines(text, ids)  # broken JSON is still text worth checking
        else:
            for pointer, value in _json_values(data, ""):
                where = f"JSON value at {ids.redact(pointer) or '(root)'}"
                yield from ((f, where) for f in ids.find(value))
    elif name.endswith(".tsv"):
        yield from _scan_tsv(_decode(path.read_bytes()), ids)
    elif path.suffix.lower() in _TEXT_SUFFIXES or name in _TEXT_NAMES:
        yield from _scan_lines(_decode(path.read_bytes()), ids)
    elif not path.suffix:
        data = path.read_bytes()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return  # binary without a suffix: only its name is checked
        if "\0" not in text:
            yield from _scan_lines(text, ids)


def _scan_dicom(path: Path, ids: Identifiers) -> Iterator[tuple[str, str]]:
    """Every text element of a DICOM file (sequences included), as published sourcedata."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    for elem in ds.iterall():
        if elem.VR in _DICOM_TEXT_VRS and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                yield from ((f, f"DICOM {elem.keyword or elem.tag}") for f in ids.find(str(value)))


def _scan_lines(text: str, ids: Identifiers) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(text.split("\n"), 1):
        yield from ((f, f"text line {number}") for f in ids.find(line))


def _json_values(value: object, pointer: str) -> Iterator[tuple[str, str]]:
    """(JSON Pointer, value as text) for every scalar; keys are only part of the pointer."""
    if isinstance(value, dict):
        for key, item in value.items():
            escaped = str(key).replace("~", "~0").replace("/", "~1")
            yield from _json_values(item, f"{pointer}/{escaped}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _json_values(item, f"{pointer}/{index}")
    elif value is not None:
        yield pointer, str(value)


def _scan_tsv(text: str, ids: Identifiers) -> Iterator[tuple[str, str]]:
    lines = text.split("\n")
    header = lines[0].rstrip("\r").split("\t")
    # column names are written by us, but a header cell holding a value must not go unseen
    yield from ((f, "TSV header") for cell in header for f in ids.find(cell))
    for line in lines[1:]:
        for index, cell in enumerate(line.rstrip("\r").split("\t")):
            column = header[index] if index < len(header) else f"#{index + 1}"
            where = f"TSV column {ids.redact(column)}"
            yield from ((f, where) for f in ids.find(cell))


def _scan_nifti(path: Path, ids: Identifiers) -> Iterator[tuple[str, str]]:
    # Imported here: nibabel and numpy cost most of a second, and only the gate needs them.
    import nibabel as nib
    import numpy as np

    header = nib.load(path).header  # the data stays an unread proxy
    if not isinstance(header, nib.Nifti1Header):  # also Nifti2Header
        return
    fields = header.structarr.dtype.names or ()
    for key in _NIFTI_TEXT_FIELDS:
        if key in fields:
            raw = np.asarray(header.structarr[key]).item()
            text = _decode(raw) if isinstance(raw, bytes) else str(raw)
            yield from ((f, f"NIfTI header {key}") for f in ids.find(text.rstrip("\0")))
