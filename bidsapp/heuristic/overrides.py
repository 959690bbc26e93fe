"""Per-study overrides without writing a heuristic: skip or rename series, patch sidecars.

A small TOML or JSON file::

    [[series]]
    number = 25                      # and/or description = "asl*" (glob, case-insensitive)
    sidecar = { BackgroundSuppression = false }

    [[series]]
    description = "*localizer*"
    skip = "not needed"              # the reason shown in the report

    [[series]]
    number = 7
    bids = "func/task-motor_bold"    # datatype/entities_suffix, no subject or session

Checked up front: a mistake is one line naming the entry and what is wrong (exit 64).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from bidsapp import bids
from bidsapp.errors import UsageError
from bidsapp.heuristic.plan import Override, parse_bids_name

ENV = "BIDSAPP_OVERRIDES"
# the datatypes an MR exam converts into (the schema says which suffixes and entities each takes)
CONVERTED = ("anat", "dwi", "fmap", "func", "perf")
_KEYS = {"number", "description", "skip", "bids", "sidecar", "aslcontext"}
_BIDS_NAME = re.compile(r"^[a-z]+/([a-z]+-[A-Za-z0-9]+_)*[A-Za-z0-9]+$")
_ASL_TYPES = {"control", "label", "m0scan", "deltam", "cbf", "noRF"}
# fields bidsapp itself decides; an override must not point them at other files or subjects
_PROTECTED = {"IntendedFor", "B0FieldIdentifier", "B0FieldSource"}


def load(path: Path) -> tuple[Override, ...]:
    """Read and validate an overrides file (TOML, or JSON by its .json suffix)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"overrides file {path} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"overrides file {path.name} is not UTF-8 text") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"overrides file {path.name} is not valid: {exc}") from exc
    except RecursionError:  # the format has no such nesting; a parser cannot follow it
        raise UsageError(f"overrides file {path.name} is nested too deeply") from None
    return parse(data, path.name)


def parse(data: Any, where: str = "overrides") -> tuple[Override, ...]:
    """Validate the parsed document; every error names the entry it is in."""
    if not isinstance(data, dict) or set(data) - {"series"}:
        extra = sorted(set(data) - {"series"}) if isinstance(data, dict) else []
        raise UsageError(
            f"{where}: expected only a 'series' list"
            + (f", found {', '.join(extra)}" if extra else ""),
            hint="see 'bidsapp --help' and the README for the overrides format",
        )
    entries = data.get("series", [])
    if not isinstance(entries, list):
        raise UsageError(f"{where}: 'series' must be a list of tables ([[series]])")
    return tuple(_entry(e, f"{where}: series entry {k}") for k, e in enumerate(entries, start=1))


def _entry(e: Any, where: str) -> Override:
    if not isinstance(e, dict):
        raise UsageError(f"{where} is not a table")
    unknown = sorted(set(e) - _KEYS)
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KEYS))}"
        )
    number = e.get("number")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
        raise UsageError(f"{where}: 'number' must be a series number (an integer)")
    description = e.get("description", "")
    if not isinstance(description, str):
        raise UsageError(f"{where}: 'description' must be a text pattern")
    if number is None and not description:
        raise UsageError(f"{where}: give a series 'number' or a 'description' pattern")
    skip = e.get("skip", "")
    if skip is True:
        skip = "by request"
    if not isinstance(skip, str):
        raise UsageError(f"{where}: 'skip' must be true or a reason")
    bids = e.get("bids", "")
    if bids:
        _check_bids(bids, where)
    if skip and bids:
        raise UsageError(f"{where}: 'skip' and 'bids' exclude each other")
    sidecar = e.get("sidecar", {})
    if not isinstance(sidecar, dict) or not all(isinstance(k, str) for k in sidecar):
        raise UsageError(f"{where}: 'sidecar' must be a table of field = value")
    bad = sorted(k for k in sidecar if k in _PROTECTED or not re.fullmatch(r"[A-Z][A-Za-z0-9]*", k))
    if bad:
        raise UsageError(f"{where}: sidecar field(s) {', '.join(bad)} cannot be set here")
    context = e.get("aslcontext", [])
    if not isinstance(context, list) or not all(c in _ASL_TYPES for c in context):
        raise UsageError(f"{where}: 'aslcontext' must be a list of {', '.join(sorted(_ASL_TYPES))}")
    return Override(number, description, skip, bids, tuple(sorted(sidecar.items())), tuple(context))


def _check_bids(name: object, where: str) -> None:
    if not isinstance(name, str) or not _BIDS_NAME.match(name):
        raise UsageError(f"{where}: 'bids' must look like 'func/task-motor_bold', got {name!r}")
    datatype, entities, suffix = parse_bids_name(name)
    # the BIDS schema decides: any raw-data suffix of the datatype, with the entities it allows
    wrong = bids.problem(datatype, [k for k, _ in entities], suffix, within=CONVERTED)
    if wrong:
        raise UsageError(f"{where}: {wrong}")


def dump(overrides: tuple[Override, ...], path: Path) -> None:
    """The validated overrides as JSON, for the heuristic running inside heudiconv."""
    path.write_text(json.dumps({"series": [_as_dict(o) for o in overrides]}) + "\n")


def _as_dict(o: Override) -> dict[str, Any]:
    d: dict[str, Any] = {"sidecar": dict(o.sidecar), "aslcontext": list(o.aslcontext)}
    if o.number is not None:
        d["number"] = o.number
    for key in ("description", "skip", "bids"):
        if getattr(o, key):
            d[key] = getattr(o, key)
    return d


def from_env() -> tuple[Override, ...]:
    """The overrides bidsapp handed to heudiconv (none when run outside bidsapp)."""
    path = os.environ.get(ENV)
    return load(Path(path)) if path else ()
