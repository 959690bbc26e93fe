"""The body of bidsapp's header-based heudiconv heuristics (`auto` and the lab example).

A heuristic file stays a plain heudiconv heuristic. It defines `plan = planner(RULES)`, which
bidsapp calls itself with the exam's summaries, and `infotodict = infotodict_with(plan)` for
heudiconv: inside bidsapp the summaries come from staging and one dcm2niix pass
(BIDSAPP_HEADERS, possibly still being written while heudiconv scans: it waits); in a plain
heudiconv run from its `custom_seqinfo` hook. The heuristic records which template it gave
each heudiconv series (BIDSAPP_PLAN), so bidsapp can name every image afterwards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from heudiconv.utils import SeqInfo

from bidsapp.heuristic.classify import Decision
from bidsapp.heuristic.headers import SeriesHeader, from_custom, read_summaries
from bidsapp.heuristic.overrides import from_env
from bidsapp.heuristic.plan import Override, output_plan, plan
from bidsapp.heuristic.prepass import HEADERS_ENV

Key = tuple[str, tuple[str, ...], None]
Planner = Callable[[Sequence[SeriesHeader], Sequence[Override]], list[Decision]]
PLAN_ENV = "BIDSAPP_PLAN"
WAIT_S = 3600.0  # the dcm2niix pass bidsapp runs beside heudiconv's scan is never this slow
# The provisional suffix of a series that makes several images: heudiconv neither adds echo-
# nor part- to it, only a number, so no two images can collide; bidsapp renames them.
PROVISIONAL = "magnitude"


def create_key(
    template: str, outtype: tuple[str, ...] = ("nii.gz",), annotation_classes: None = None
) -> Key:
    return template, outtype, annotation_classes


def planner(rules: Sequence[Override] = ()) -> Planner:
    """The session plan with a study's rules applied before the exam's overrides."""

    def plan_exam(
        headers: Sequence[SeriesHeader], overrides: Sequence[Override] = ()
    ) -> list[Decision]:
        return plan(headers, (*rules, *overrides))

    return plan_exam


def template(name: str) -> str:
    """heudiconv's template for a `datatype/<entities>_suffix` name."""
    folder, _, stem = name.partition("/")
    return f"{{bids_subject_session_dir}}/{folder}/{{bids_subject_session_prefix}}_{stem}"


def summaries_for(seqinfo: Sequence[SeqInfo]) -> list[SeriesHeader]:
    """bidsapp's summaries (waiting for them), else those custom_seqinfo made."""
    path = os.environ.get(HEADERS_ENV)
    if not path:
        return [
            from_custom(s.custom if isinstance(s.custom, tuple) else (), s.series_id)
            for s in seqinfo
        ]
    deadline = time.monotonic() + WAIT_S
    while not Path(path).is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no series summaries in {path} after {WAIT_S:.0f} s")
        time.sleep(0.05)
    return read_summaries(Path(path))


def infotodict_with(plan_exam: Planner) -> Callable[[Iterable[SeqInfo]], dict[Key, list[str]]]:
    """heudiconv's entry point for a planner: {template: [heudiconv series ids]}."""

    def infotodict(seqinfo: Iterable[SeqInfo]) -> dict[Key, list[str]]:
        series = list(seqinfo)
        headers = summaries_for(series)
        decisions = {d.key: d for d in plan_exam(headers, from_env())}
        info: dict[Key, list[str]] = {}
        record = []
        for s in series:
            # heudiconv groups files by series number and protocol name: one of its series can
            # hold two acquisitions (two UIDs), and dcm2niix can make several images of one
            members = [h for h in headers if h.series_id == s.series_id] or [
                h for h in headers if h.series_uid == s.series_uid
            ]
            # the series' place among all of the unit's (not only those this heudiconv run
            # sees: bidsapp may split a large unit between parallel runs), so names never clash
            number = headers.index(members[0]) + 1 if members else 0
            images = [(o, name) for h in members for o, name, _ in output_plan(decisions[h.key], h)]
            names = [name for _, name in images if name]
            if not names:
                continue
            first = next(decisions[h.key] for h in members if not decisions[h.key].skipped)
            single = len(images) == 1
            chosen = template(
                names[0] if single else f"{first.datatype}/acq-bidsapp{number}_{PROVISIONAL}"
            )
            info.setdefault(create_key(chosen), []).append(s.series_id)
            record.append(
                {"series_id": s.series_id, "template": chosen, "members": [h.key for h in members]}
            )
        target = os.environ.get(PLAN_ENV)
        if target:
            Path(target).write_text(json.dumps(record, indent=1), encoding="utf-8")
        return info

    return infotodict


def infotodict(seqinfo: Iterable[SeqInfo], rules: Sequence[Override] = ()) -> dict[Key, list[str]]:
    """The default classification with `rules`: for heuristics written before `planner`."""
    return infotodict_with(planner(rules))(seqinfo)
