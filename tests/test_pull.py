"""`bidsapp pull`: a Drive dataset back on disk, verified, resumable, and valid with `-r`.

One dataset of two subjects is converted and published to the Drive emulator once (participant
and group through the real CLI); each test pulls it, or part of it, into a folder of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bidsapp_sandbox.emulator import Emulator
from bidsapp_sandbox.exams import Patient, Series, write_session

from bidsapp.tools import which
from tests.conftest import need, run_bidsapp

pytestmark = pytest.mark.slow

SA = "bidsapp@proj.iam.gserviceaccount.com"
T1 = (Series("anat-T1w", "t1w"),)


@dataclass(frozen=True)
class Published:
    emu: Emulator
    bids: str  # the dataset folder's Drive id
    location: str
    key: Path
    env: dict[str, str]
    work: Path

    def pull(self, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_bidsapp(
            "pull", self.location, dest, "--credentials", self.key, *extra,
            work=self.work, env=self.env, work_flag=False,
        )  # fmt: skip

    def tree(self) -> dict[str, bytes]:
        return self.emu.tree(self.bids)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    need(which("bids-validator-deno") is not None, "bids-validator-deno is not installed")
    tmp = tmp_path_factory.mktemp("pull")
    for n, name in enumerate(("01", "02"), start=1):
        write_session(tmp / "source" / name, patient=Patient(name=f"Doe^Pat{n}"), series=T1, seed=n)
    with Emulator(seed=3) as emu:
        key = emu.service_account(SA, dest=tmp / "sa.json")
        drive = emu.shared_drive("BIDS", members={SA: "fileOrganizer"})
        env = {"BIDSAPP_DRIVE_URL": emu.url, "BIDSAPP_DRIVE_RPS": "200"}
        location = f"gdrive://{drive}/bids"
        for level in ("participant", "group"):
            done = run_bidsapp(
                tmp / "source", location, level, "--credentials", key,
                "--author", "A. Tester", work=tmp / "work", env=env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        bids = next(m["id"] for m in emu.listing(drive) if m["name"] == "bids")
        yield Published(emu, bids, location, key, env, tmp / "work")


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).as_posix().startswith(".bidsapp/pull")
    }


def test_a_whole_pull_matches_drive_and_validates_recursively(
    published: Published, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    result = published.pull(dest)
    assert result.returncode == 0, result.stderr
    drive = {
        rel: data
        for rel, data in published.tree().items()
        if not rel.startswith((".bidsapp/locks/", ".bidsapp/incoming/", ".bidsapp/replaced/"))
    }
    got = files(dest)
    assert set(got) == set(drive)
    assert all(hashlib.md5(got[r]).digest() == hashlib.md5(drive[r]).digest() for r in drive)
    assert "sub-01/anat/sub-01_T1w.nii.gz" in got and "derivatives/bidsapp/.log/index.html" in got
    checked = subprocess.run(
        [str(which("bids-validator-deno")), "-r", str(dest), "--format", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-2000:]


def test_a_rerun_fetches_only_what_changed_or_never_arrived(
    published: Published, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    assert published.pull(dest).returncode == 0
    # an interrupted first pull: state gone, one file cut short, one never arrived
    (dest / ".bidsapp/pull.json").unlink()
    nifti = dest / "sub-02/anat/sub-02_T1w.nii.gz"
    nifti.write_bytes(nifti.read_bytes()[:100])
    (dest / "participants.tsv").unlink()
    killed = nifti.with_name(nifti.name + ".bidsapp-part")  # what a SIGKILL leaves behind
    killed.write_bytes(b"half")
    mine = dest / "notes.txt"
    mine.write_text("a person's file\n")

    published.emu.reset_stats()
    again = published.pull(dest)

    assert again.returncode == 0, again.stderr
    assert "2 files fetched" in again.stdout, again.stdout
    downloads = [r for r in published.emu.request_log() if r["op"] == "media"]
    assert len(downloads) == 2  # the rest were checked by md5 on disk, not fetched
    assert nifti.read_bytes() == published.tree()["sub-02/anat/sub-02_T1w.nii.gz"]
    assert mine.read_text() == "a person's file\n" and not killed.exists()

    published.emu.reset_stats()
    third = published.pull(dest)
    assert third.returncode == 0 and "0 files fetched" in third.stdout, third.stdout
    assert not [r for r in published.emu.request_log() if r["op"] == "media"]


def test_one_subject_or_only_the_reports(published: Published, tmp_path: Path) -> None:
    one = tmp_path / "one"
    assert published.pull(one, "--participant-label", "02").returncode == 0
    got = set(files(one))
    assert "sub-02/anat/sub-02_T1w.nii.gz" in got and "dataset_description.json" in got
    assert "derivatives/bidsapp/sub-02/.log/gate.json" in got
    assert not [p for p in got if "sub-01" in p]

    reports = tmp_path / "reports"
    assert published.pull(reports, "--only-reports").returncode == 0
    got = set(files(reports))
    assert "derivatives/bidsapp/sub-01/.log/report.html" in got
    assert "derivatives/bidsapp/.log/index.html" in got
    assert not [p for p in got if p.endswith(".nii.gz") and not p.startswith("derivatives/")]
    assert not [p for p in got if not p.startswith(("derivatives/bidsapp/", ".bidsapp/"))]

    missing = published.pull(tmp_path / "none", "--participant-label", "07")
    assert missing.returncode == 66 and "holds nothing of sub-07" in missing.stderr


def test_a_file_drive_no_longer_has_is_removed_unless_changed_here(
    published: Published, tmp_path: Path
) -> None:
    dest = tmp_path / "copy"
    assert published.pull(dest, "--only-reports").returncode == 0
    state = json.loads((dest / ".bidsapp/pull.json").read_text())
    # as if OUTPUT had had two more report files the last time
    for name in ("old.html", "edited.html"):
        rel = f"derivatives/bidsapp/sub-01/.log/{name}"
        (dest / rel).write_text("old\n")
        st = (dest / rel).stat()
        state["files"][rel] = {"key": "0" * 32, "local": f"{st.st_size}:{st.st_mtime_ns}"}
    (dest / ".bidsapp/pull.json").write_text(json.dumps(state))
    (dest / "derivatives/bidsapp/sub-01/.log/edited.html").write_text("changed by a person\n")

    again = published.pull(dest, "--only-reports")

    assert again.returncode == 0, again.stderr
    assert "1 removed" in again.stdout
    assert not (dest / "derivatives/bidsapp/sub-01/.log/old.html").exists()
    assert (dest / "derivatives/bidsapp/sub-01/.log/edited.html").exists()
    assert "changed in DEST and kept" in again.stderr


def test_pull_into_a_mistyped_folder_is_refused(published: Published, tmp_path: Path) -> None:
    typo = tmp_path / "no" / "such" / "dest"
    result = published.pull(typo)
    assert result.returncode == 66 and "DEST" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "no").exists()
