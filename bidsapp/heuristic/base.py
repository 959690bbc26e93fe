"""The body of bidsapp's header-based heudiconv heuristics (`auto` and the lab example).

A heuristic file stays a plain heudiconv heuristic; this module is what it calls: summarise each
series from its headers, classify them (with a study's rules and the exam's overrides on top),
hand heudiconv its {template: series} mapping, and leave the decisions for bidsapp to finish
sidecars and list skipped series.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from heudiconv.utils import SeqInfo

from bidsapp.heuristic.classify import Override, plan
from bidsapp.heuristic.finish import write_plan
from bidsapp.heuristic.headers import from_custom
from bidsapp.heuristic.overrides import from_env

Key = tuple[str, tuple[str, ...], None]


def create_key(
    template: str, outtype: tuple[str, ...] = ("nii.gz",), annotation_classes: None = None
) -> Key:
    return template, outtype, annotation_classes


def infotodict(seqinfo: Iterable[SeqInfo], rules: Sequence[Override] = ()) -> dict[Key, list[str]]:
    """heudiconv's {template: [series ids]} for these series; `rules` apply before overrides."""
    # `custom` is what headers.custom_seqinfo returned: a tuple of (field, value) pairs
    headers = [
        from_custom(s.custom if isinstance(s.custom, tuple) else (), s.series_id) for s in seqinfo
    ]
    decisions = plan(headers, (*rules, *from_env()))
    by_id = {h.series_id: h for h in headers}
    info: dict[Key, list[str]] = {}
    for d in decisions:
        if not d.skipped:
            outputs = len(by_id[d.series_id].outputs)
            info.setdefault(create_key(d.template(outputs)), []).append(d.series_id)
    write_plan(decisions, by_id)
    return info
