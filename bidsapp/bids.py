"""BIDS names, from the standard's own schema (bidsschematools): entity keys and their order,
each datatype's valid suffixes and entities, and the one (subject, session) type every part of
bidsapp names files, folders and jobs with."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LABEL = re.compile(r"[A-Za-z0-9]+")


@functools.cache
def _schema() -> Any:
    from bidsschematools import schema

    return schema.load_schema()


@functools.cache
def entity_keys() -> tuple[str, ...]:
    """Every entity's key (`sub`, `ses`, `task`, `acq`, …) in the order names must give them."""
    s = _schema()
    return tuple(str(s.objects.entities[name].name) for name in s.rules.entities)


@functools.cache
def _rules() -> dict[str, list[tuple[frozenset[str], frozenset[str]]]]:
    """Per datatype: (suffixes, entity keys allowed) of each raw-data file rule."""
    s = _schema()
    found: dict[str, list[tuple[frozenset[str], frozenset[str]]]] = {}
    for group in s.rules.files.raw.values():
        for rule in group.values():
            keys = frozenset(str(s.objects.entities[e].name) for e in rule.get("entities", {}))
            for datatype in rule.get("datatypes", []):
                found.setdefault(str(datatype), []).append((frozenset(rule["suffixes"]), keys))
    return found


def datatypes() -> tuple[str, ...]:
    return tuple(sorted(_rules()))


def suffixes(datatype: str) -> tuple[str, ...]:
    return tuple(sorted({s for suffixes, _ in _rules().get(datatype, []) for s in suffixes}))


def problem(datatype: str, entities: Iterable[str], suffix: str, within: Iterable[str] = ()) -> str:
    """Why `datatype/<entities>_suffix` is no valid raw BIDS name ('' when it is one);
    `within` narrows the datatypes accepted."""
    rules = _rules()
    known = sorted(set(within) & set(rules)) if within else datatypes()
    if datatype not in known:
        return f"datatype {datatype!r} is not one of {', '.join(known)}"
    allowed = [keys for sufs, keys in rules[datatype] if suffix in sufs]
    if not allowed:
        return f"suffix {suffix!r} is not one of {', '.join(suffixes(datatype))} for {datatype}"
    keys = sorted(set().union(*allowed) - {"sub", "ses"}, key=entity_keys().index)
    wrong = [e for e in entities if e not in keys]
    if wrong:
        return f"entity {wrong[0]!r} is not one of {', '.join(keys)} for {datatype}/{suffix}"
    return ""


def ordered(entities: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The entities in the standard's order (unknown keys last, as given)."""
    order = {k: n for n, k in enumerate(entity_keys())}
    return tuple(sorted(entities.items(), key=lambda kv: order.get(kv[0], len(order))))


def stem(entities: Mapping[str, str], suffix: str) -> str:
    """`key-value_…_suffix`: a file name without its extension."""
    return "_".join([*(f"{k}-{v}" for k, v in ordered(entities)), suffix])


@dataclass(frozen=True, order=True)
class SubjectSession:
    """One participant label, and one of its sessions ('' for a subject without sessions)."""

    label: str
    session: str = ""

    @property
    def prefix(self) -> str:
        """`sub-01` or `sub-01_ses-2`: how file names start."""
        return f"sub-{self.label}" + (f"_ses-{self.session}" if self.session else "")

    @property
    def folder(self) -> str:
        """`sub-01` or `sub-01/ses-2`: where its data lives in a dataset."""
        return f"sub-{self.label}" + (f"/ses-{self.session}" if self.session else "")

    @property
    def job_name(self) -> str:
        """A PHI-free name for the job (and its records): `sub-01` or `sub-01_ses-2`."""
        return self.prefix

    @property
    def subject(self) -> SubjectSession:
        """The whole subject (its lock, its `sub-<label>` folder), whatever the session."""
        return SubjectSession(self.label)

    @property
    def tag(self) -> str:
        """`01` or `01-2`: the job in bookkeeping names (no `_`, so run ids stay apart)."""
        return self.label + (f"-{self.session}" if self.session else "")

    def path(self, name: str) -> str:
        """'anat/acq-x_T1w' → 'sub-01[/ses-1]/anat/sub-01[_ses-1]_acq-x_T1w'."""
        datatype, _, rest = name.partition("/")
        return f"{self.folder}/{datatype}/{self.prefix}_{rest}"
