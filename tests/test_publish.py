"""Unit tests for the publish protocol over LocalStore, with small fake trees (no DICOM)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bidsapp.errors import UsageError
from bidsapp.pipeline import publish as pub
from bidsapp.pipeline.publish import (
    FAULT_POINTS,
    Target,
    publish,
    published_manifest,
    read_manifest,
    repair,
    verify,
)
from bidsapp.stores.local import LocalStore

# two versions of one subject; each has files the other lacks
VERSIONS: dict[str, dict[str, dict[str, bytes]]] = {
    "old": {
        "data": {
            "anat/T1w.nii.gz": b"old T1w image",
            "anat/T1w.json": b'{"version": "old"}\n',
            "old-only/scans.tsv": b"filename\tacq_time\nanat/T1w.nii.gz\tn/a\n",
        },
        "deriv": {"report.html": b"<p>old</p>\n", "old-only.log": b"old log\n"},
    },
    "new": {
        "data": {
            "anat/T1w.nii.gz": b"new T1w image, a little longer",
            "anat/T1w.json": b'{"version": "new"}\n',
            "func/task-rest_bold.nii.gz": b"new bold image",
        },
        "deriv": {"report.html": b"<p>new</p>\n", "gate.json": b'{"passed": true}\n'},
    },
}
RUN_IDS = {"old": "20240101T000000aaaaaa", "new": "20240202T000000bbbbbb"}
# points reached before the pending manifest is written: an interrupted run is dropped
BEFORE_PENDING = ("upload", "uploaded")

SCRIPT = """
import sys
from pathlib import Path
from bidsapp.pipeline.publish import Target, publish
from bidsapp.stores.local import LocalStore
out, data, deriv, label, session, run = sys.argv[1:]
publish(LocalStore(Path(out)), Target(label, session), {"data": Path(data), "deriv": Path(deriv)},
        {"run_id": run, "version": "new"})
"""


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _trees(root: Path, version: str) -> tuple[Path, Path]:
    """Write the version's data and deriv trees under root; return their folders."""
    folders = []
    for part in ("data", "deriv"):
        folder = root / f"{version}-{part}"
        for rel, content in VERSIONS[version].get(part, {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(content)
        folders.append(folder)
    return folders[0], folders[1]


def _publish(out: Path, target: Target, version: str, tmp: Path) -> dict[str, Any]:
    data, deriv = _trees(tmp / f"local-{target.tag}", version)
    base = {"run_id": RUN_IDS[version], "version": version, "fingerprint": f"fp-{version}"}
    return publish(LocalStore(out), target, {"data": data, "deriv": deriv}, base)


def _expected(target: Target, version: str) -> dict[str, bytes]:
    files = {}
    for part, path in target.parts:
        for rel, content in VERSIONS[version].get(part, {}).items():
            files[f"{path}/{rel}"] = content
    return files


def _outside_bidsapp(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] != ".bidsapp"
    }


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _assert_no_leftovers(out: Path) -> None:
    assert _entries(out / ".bidsapp" / "incoming") == []
    assert _entries(out / ".bidsapp" / "replaced") == []


def _assert_published(out: Path, target: Target, version: str) -> dict[str, Any]:
    store = LocalStore(out)
    manifest = published_manifest(store, target)
    assert manifest is not None, f"{target.data} is not published"
    assert manifest["version"] == version and manifest["run_id"] == RUN_IDS[version]
    expected = _expected(target, version)
    listed = {f["path"]: (f["size"], f["md5"]) for f in manifest["files"]}
    assert listed == {path: (len(b), _md5(b)) for path, b in expected.items()}
    assert verify(store, manifest)
    # what is on disk for this target is exactly the listed files plus the manifest
    on_disk = {
        path: content
        for path, content in _outside_bidsapp(out).items()
        if any(path.startswith(f"{prefix}/") for _, prefix in target.parts)
    }
    assert on_disk == {**expected, target.manifest: (out / target.manifest).read_bytes()}
    return manifest


# ---------------------------------------------------------------------------------------------
# publish


def test_publish_into_empty_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")

    returned = _publish(out, target, "new", tmp_path)

    manifest = _assert_published(out, target, "new")
    assert returned == manifest
    assert manifest["fingerprint"] == "fp-new"
    assert sorted(_outside_bidsapp(out)) == sorted(
        [*_expected(target, "new"), "derivatives/bidsapp/sub-01/.log/manifest.json"]
    )
    prefixes = ("sub-01/", "derivatives/bidsapp/sub-01/")
    assert all(p.startswith(prefixes) for p in _outside_bidsapp(out))
    _assert_no_leftovers(out)


def test_republish_replaces_the_old_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "old", tmp_path / "a")
    _assert_published(out, target, "old")

    _publish(out, target, "new", tmp_path / "b")

    _assert_published(out, target, "new")
    files = _outside_bidsapp(out)
    assert not [p for p in files if "old-only" in p]
    assert files["sub-01/anat/T1w.json"] == b'{"version": "new"}\n'
    assert "sub-01/func/task-rest_bold.nii.gz" in files
    assert "derivatives/bidsapp/sub-01/.log/gate.json" in files
    _assert_no_leftovers(out)


def test_session_publish_leaves_other_sessions_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    ses1, ses2 = Target("01", "1"), Target("01", "2")
    _publish(out, ses1, "old", tmp_path / "a")
    before = {p: b for p, b in _outside_bidsapp(out).items() if "/ses-1/" in p}
    assert len(before) == 6

    _publish(out, ses2, "old", tmp_path / "b")
    _publish(out, ses2, "new", tmp_path / "c")

    _assert_published(out, ses2, "new")
    _assert_published(out, ses1, "old")
    after = _outside_bidsapp(out)
    assert {p: b for p, b in after.items() if "/ses-1/" in p} == before
    assert sorted(p for p in after if "/ses-2/" not in p and "/ses-1/" not in p) == []
    manifest = published_manifest(LocalStore(out), ses2)
    assert manifest is not None
    assert all(
        f["path"].startswith(("sub-01/ses-2/", "derivatives/bidsapp/sub-01/ses-2/"))
        for f in manifest["files"]
    )
    _assert_no_leftovers(out)


@pytest.mark.parametrize(
    ("first", "then"), [(Target("01", "1"), Target("01")), (Target("01"), Target("01", "1"))]
)
def test_d3_sessionless_publish_never_replaces_a_subject_with_sessions(
    tmp_path: Path, first: Target, then: Target
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _publish(out, first, "old", tmp_path / "a")
    before = _outside_bidsapp(out)

    with pytest.raises(UsageError, match="session") as caught:
        _publish(out, then, "new", tmp_path / "b")

    assert caught.value.exit_code == 64
    assert _outside_bidsapp(out) == before
    _assert_published(out, first, "old")
    _assert_no_leftovers(out)


# ---------------------------------------------------------------------------------------------
# interrupted publishes and repair

SCENARIOS = {
    # name: (target, targets published with "old" beforehand)
    "republish": (Target("01"), (Target("01"),)),
    "first publish": (Target("01"), ()),
    "session": (Target("01", "2"), (Target("01", "1"), Target("01", "2"))),
}


@pytest.mark.parametrize("point", FAULT_POINTS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_repair_after_a_kill_leaves_one_complete_copy(
    tmp_path: Path, scenario: str, point: str
) -> None:
    target, earlier = SCENARIOS[scenario]
    out = tmp_path / "out"
    out.mkdir()
    for n, t in enumerate(earlier):
        _publish(out, t, "old", tmp_path / f"earlier{n}")
    others = {
        p: b
        for p, b in _outside_bidsapp(out).items()
        if not any(p.startswith(f"{prefix}/") for _, prefix in target.parts)
    }
    data, deriv = _trees(tmp_path / "new", "new")
    env = {**os.environ, pub.FAULT_ENV: point}
    argv = [str(out), str(data), str(deriv), target.label, target.session, RUN_IDS["new"]]

    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr  # the fault fired at `point`

    store = LocalStore(out)
    actions = repair(store, target)
    assert bool(actions) == (point != "cleaned"), actions

    expected = "old" if point in BEFORE_PENDING else "new"
    if expected == "old" and not earlier:
        # nothing was ever published: nothing may appear
        assert published_manifest(store, target) is None
        assert not any(
            p.startswith(f"{prefix}/") for p in _outside_bidsapp(out) for _, prefix in target.parts
        )
    else:
        _assert_published(out, target, expected)
    _assert_no_leftovers(out)
    # other sessions untouched, and nothing else outside .bidsapp
    assert {
        p: b
        for p, b in _outside_bidsapp(out).items()
        if not any(p.startswith(f"{prefix}/") for _, prefix in target.parts)
    } == others
    for t in earlier:
        if t != target:
            _assert_published(out, t, "old")

    # a second repair has nothing to do; a rerun publishes the new version cleanly
    snapshot = _outside_bidsapp(out)
    assert repair(store, target) == []
    assert _outside_bidsapp(out) == snapshot
    data, deriv = _trees(tmp_path / "rerun", "new")
    rerun = {"run_id": "20240303T000000cccccc", "version": "new"}
    publish(store, target, {"data": data, "deriv": deriv}, rerun)
    assert published_manifest(store, target) is not None
    _assert_no_leftovers(out)


def test_repair_drops_an_orphan_replaced_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "old", tmp_path)
    orphan = out / ".bidsapp" / "replaced" / f"01-{RUN_IDS['new']}" / "data"
    orphan.mkdir(parents=True)
    (orphan / "x.nii.gz").write_bytes(b"stale")
    other = out / ".bidsapp" / "replaced" / f"02-{RUN_IDS['new']}"
    other.mkdir()

    assert repair(LocalStore(out), target) == ["removed a replaced copy"]

    assert _entries(out / ".bidsapp" / "replaced") == [other.name]  # another subject's: kept
    _assert_published(out, target, "old")


# ---------------------------------------------------------------------------------------------
# verify and manifests


def _break_missing(out: Path) -> None:
    (out / "sub-01" / "anat" / "T1w.json").unlink()


def _break_same_size(out: Path) -> None:
    path = out / "sub-01" / "anat" / "T1w.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))


def _break_truncated(out: Path) -> None:
    path = out / "derivatives" / "bidsapp" / "sub-01" / ".log" / "report.html"
    path.write_bytes(path.read_bytes()[:3])


def _break_deriv_missing(out: Path) -> None:
    (out / "derivatives" / "bidsapp" / "sub-01" / ".log" / "gate.json").unlink()


def _break_whole_folder(out: Path) -> None:
    for p in sorted((out / "sub-01").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()


def _break_file_is_folder(out: Path) -> None:
    path = out / "sub-01" / "func" / "task-rest_bold.nii.gz"
    path.unlink()
    path.mkdir()


BREAKS = {
    "data file missing": _break_missing,
    "content changed, same size": _break_same_size,
    "deriv file truncated": _break_truncated,
    "deriv file missing": _break_deriv_missing,
    "data folder gone": _break_whole_folder,
    "file replaced by a folder": _break_file_is_folder,
}


@pytest.mark.parametrize("damage", list(BREAKS))
def test_verify_fails_on_damaged_files(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "new", tmp_path)
    store = LocalStore(out)
    manifest = read_manifest(store, target)
    assert manifest is not None and verify(store, manifest)

    BREAKS[damage](out)

    assert verify(store, manifest) is False
    assert published_manifest(store, target) is None


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"files": [{"path": "sub-01/anat/T1w.json"', b"\xff\xfe\x00garbage", b"not json"],
)
def test_unparseable_manifest_is_not_published(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "old", tmp_path / "a")
    (out / target.manifest).write_bytes(content)
    store = LocalStore(out)

    assert read_manifest(store, target) is None
    assert published_manifest(store, target) is None

    _publish(out, target, "new", tmp_path / "b")  # a rerun publishes again
    _assert_published(out, target, "new")


@pytest.mark.parametrize("content", [b"[]", b'"manifest"', b"42", b"null"])
def test_manifest_that_is_not_an_object_is_not_published(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "old", tmp_path)
    (out / target.manifest).write_bytes(content)

    assert published_manifest(LocalStore(out), target) is None


def test_missing_manifest_is_not_published(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    assert published_manifest(LocalStore(out), target) is None
    _publish(out, target, "old", tmp_path)
    (out / target.manifest).unlink()
    assert published_manifest(LocalStore(out), target) is None


def test_sourcedata_part_is_published_and_a_stale_copy_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    store, target = LocalStore(out), Target("01")
    data, deriv = _trees(tmp_path / "a", "old")
    source = tmp_path / "a" / "source"
    (source / "study-1").mkdir(parents=True)
    (source / "study-1" / "000001.dcm").write_bytes(b"dicom copy")
    first = {"run_id": "20240101T000000aaaaaa", "version": "old"}
    publish(store, target, {"data": data, "deriv": deriv, "source": source}, first)
    assert (out / "sourcedata/sub-01/study-1/000001.dcm").read_bytes() == b"dicom copy"
    assert "sourcedata/sub-01/study-1/000001.dcm" in {
        f["path"] for f in published_manifest(store, target)["files"]
    }
    data, deriv = _trees(tmp_path / "b", "new")
    second = {"run_id": "20240202T000000bbbbbb", "version": "new"}
    publish(store, target, {"data": data, "deriv": deriv}, second)
    assert not (out / "sourcedata/sub-01").exists(), "a copy no longer asked for is removed"
    _assert_no_leftovers(out)


class _CountingStore(LocalStore):
    """The local store, counting whole-file reads (md5) to show what knowing costs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.hashed = 0

    def md5(self, path: str) -> str:
        self.hashed += 1
        return super().md5(path)


def _published_01(tmp_path: Path) -> tuple[Path, Target]:
    """OUTPUT with sub-01 published."""
    out = tmp_path / "out"
    out.mkdir()
    target = Target("01")
    _publish(out, target, "new", tmp_path)
    return out, target


def test_knowing_what_is_published_reads_no_published_byte(tmp_path: Path) -> None:
    out, target = _published_01(tmp_path)
    store = _CountingStore(out)
    assert published_manifest(store, target) is not None
    assert store.hashed == 0  # sizes and modification times only
    assert published_manifest(store, target, deep=True) is not None  # --verify
    assert store.hashed == len(_expected(target, "new"))


def test_only_verify_sees_a_change_that_kept_size_and_time(tmp_path: Path) -> None:
    # the one change a key of size and modification time cannot see: same size, time put back
    out, target = _published_01(tmp_path)
    store = LocalStore(out)
    manifest = read_manifest(store, target)
    assert manifest is not None
    victim = out / manifest["files"][0]["path"]
    stat = victim.stat()
    data = victim.read_bytes()
    victim.write_bytes(bytes(b ^ 0xFF for b in data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verify(store, manifest) is True
    assert verify(store, manifest, deep=True) is False
