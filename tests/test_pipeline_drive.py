"""The whole pipeline with SOURCE and OUTPUT on Drive (the emulator), through the real CLI.

The service account signs in through the emulator's token endpoint; OUTPUT is a shared drive
where it is a Content manager. The data files must match a local run md5 for md5.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bidsapp_sandbox.emulator import Emulator, Fault
from bidsapp_sandbox.exams import Series

from bidsapp.privacy.phi import Identifiers, scan_tree
from tests.conftest import MakeExam, RunCli, error_lines

pytestmark = pytest.mark.slow

SA = "bidsapp@proj.iam.gserviceaccount.com"
LAB = "lab@example.org"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(seed=2) as emulator:
        emulator.service_account(email=SA, dest=tmp_path / "sa.json")
        yield emulator


def drive_env(emu: Emulator) -> dict[str, str]:
    return {
        "BIDSAPP_DRIVE_URL": emu.url,
        "BIDSAPP_DRIVE_BACKOFF": "0.01,0.1,8,60",
        "BIDSAPP_DRIVE_RPS": "200",
    }


def seed(emu: Emulator, local_source: Path) -> tuple[str, str]:
    """The local exams copied into the lab's Drive and shared read-only; an empty shared drive."""
    source = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    emu.upload_tree(local_source, parent=source, owner=LAB)
    emu.share(source, SA, role="reader")
    return source, emu.shared_drive("BIDS", members={SA: "fileOrganizer"})


def data_md5s(manifest: dict) -> dict[str, str]:
    return {f["path"]: f["md5"] for f in manifest["files"] if f["path"].startswith("sub-")}


def drive_manifest(emu: Emulator, out: str) -> dict:
    bids = next(m["id"] for m in emu.listing(out) if m["name"] == "bids")
    tree = emu.tree(bids)
    return json.loads(tree["derivatives/bidsapp/sub-01/.log/manifest.json"])


def test_drive_to_drive_matches_the_local_run(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, emu: Emulator
) -> None:
    make_exam("01")
    source_dir = tmp_path / "source"
    local = bidsapp(source_dir, tmp_path / "out", "participant")
    assert local.returncode == 0, local.stderr
    local_manifest = json.loads(
        (tmp_path / "out/derivatives/bidsapp/sub-01/.log/manifest.json").read_text()
    )

    source, out = seed(emu, source_dir)
    env = drive_env(emu)
    key = tmp_path / "sa.json"
    src, dst = f"gdrive://{source}", f"gdrive://{out}/bids"
    first = bidsapp(src, dst, "participant", "--credentials", key, env=env)
    assert first.returncode == 0, first.stderr
    assert data_md5s(drive_manifest(emu, out)) == data_md5s(local_manifest)

    again = bidsapp(src, dst, "participant", "--credentials", key, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr

    emu.reset_stats()
    group = bidsapp(src, dst, "group", "--credentials", key, env=env)
    assert group.returncode == 0, group.stderr
    assert "dataset validation: 0 errors" in group.stderr
    bids = next(m["id"] for m in emu.listing(out) if m["name"] == "bids")
    tree = emu.tree(bids)
    assert tree["participants.tsv"] == b"participant_id\nsub-01\n"
    assert ".bidsapp/group-validation.json" in tree
    # group fetched NIfTI files as header prefixes only (Range, at most 64 KiB), never whole.
    media = [r for r in emu.request_log() if r["op"] == "media"]
    nifti = [
        r
        for r in media
        if emu.metadata(r["path"].rsplit("/", 1)[-1])["name"].endswith((".nii", ".nii.gz"))
    ]
    assert nifti, "group read no NIfTI header"
    for request in nifti:
        assert str(request["range"]).startswith("bytes=0-") and request["status"] == 206
        assert request["bytes"] <= 64 * 1024
    for text in (first.stderr, again.stderr, group.stderr):
        assert "souza" not in text.lower() and "private_key" not in text

    # status checks every published file's md5 from folder listings, not one lookup per file.
    emu.reset_stats()
    status = bidsapp("status", dst, "--json", "--credentials", key, env=env)
    assert status.returncode == 0, status.stderr
    assert [(r["label"], r["published"]) for r in json.loads(status.stdout)] == [("01", True)]
    # Measured: 21 requests for this 7-file subject; 32 when every file was looked up by name.
    assert len(drive_manifest(emu, out)["files"]) == 7
    assert emu.stats()["requests"] <= 24, emu.stats()


def test_mixed_faults_end_to_end(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, emu: Emulator
) -> None:
    make_exam("01")
    source, out = seed(emu, tmp_path / "source")
    emu.set_faults(
        [
            Fault(kind="503", on="any", probability=0.08),
            Fault(kind="rate403", on="list", probability=0.1),
            Fault(kind="reset", on="media", every=4),
            Fault(kind="truncate", on="media", every=5),
            Fault(kind="reset", on="create", every=3),
            Fault(kind="500", on="upload", every=4),
            Fault(kind="token_expiry", on="any", every=40),
        ],
        seed=7,
    )
    result = bidsapp(
        f"gdrive://{source}",
        f"gdrive://{out}/bids",
        "participant",
        "--credentials",
        tmp_path / "sa.json",
        env=drive_env(emu),
    )
    assert result.returncode == 0, result.stderr
    assert emu.stats()["faults_injected"] >= 5
    emu.set_faults([])
    manifest = drive_manifest(emu, out)
    bids = next(m["id"] for m in emu.listing(out) if m["name"] == "bids")
    tree = emu.tree(bids)  # raises on duplicate paths
    for item in manifest["files"]:
        assert item["path"] in tree


def test_subjects_on_drive_maps_duplicate_names_by_id(
    tmp_path: Path, bidsapp: RunCli, emu: Emulator
) -> None:
    source = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    emu.folder("Lima Bruno", parent=source, owner=LAB)
    twins = [emu.folder("Souza Ana", parent=source, owner=LAB) for _ in range(2)]
    emu.share(source, SA)
    subject_map = tmp_path / "map.tsv"
    args = ["subjects", f"gdrive://{source}", "--subject-map", subject_map]
    result = bidsapp(*args, "--credentials", tmp_path / "sa.json", env=drive_env(emu))
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in subject_map.read_text().splitlines()[1:]]
    assert sorted(r[0] for r in rows) == sorted(["Lima Bruno", *(f"id:{t}" for t in twins)])
    assert "mapped by Drive id" in result.stdout and "souza" not in result.stdout.lower()
    rerun = bidsapp(*args, "--credentials", tmp_path / "sa.json", env=drive_env(emu))
    assert "(0 new)" in rerun.stdout


EXAM_NAME = "Quixabeira Odete"  # an invented patient name, as exam folders are often called


def all_text(root: Path) -> str:
    """Every name and every readable byte under root (NIfTI and DICOM files: names only)."""
    parts = []
    for path in sorted(root.rglob("*")) if root.exists() else []:
        parts.append(path.name)
        if path.is_file() and not path.name.endswith((".nii.gz", ".png", ".dcm")):
            parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def test_an_id_mapped_exam_folders_name_is_an_identifier(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, emu: Emulator
) -> None:
    """Mapped by `id:`, the folder's name is learned from Drive and never leaves the job."""
    exam = make_exam(
        "exam",
        series=(
            Series(
                "anat-T1w",
                "t1w",
                description=f"T1 {EXAM_NAME}",
                image_comments=f"paciente {EXAM_NAME}",
            ),
        ),
        file_names=EXAM_NAME.replace(" ", "_") + "_{series:02d}_{instance:04d}.IMA",
    )
    (exam / f"{EXAM_NAME} notes.txt").write_text("not an image\n")  # skipped, and logged
    source = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    folder = emu.folder(EXAM_NAME, parent=source, owner=LAB)
    emu.upload_tree(exam, parent=folder, owner=LAB)
    emu.share(source, SA, role="reader")
    subject_map = tmp_path / "map.tsv"
    subject_map.write_text(f"source\tparticipant\tsession\nid:{folder}\t01\t\n")
    output = tmp_path / "out"
    result = bidsapp(
        f"gdrive://{source}",
        output,
        "participant",
        "--subject-map",
        subject_map,
        "--credentials",
        tmp_path / "sa.json",
        env=drive_env(emu),
    )
    assert result.returncode == 0, result.stderr
    assert (output / "sub-01/anat/sub-01_T1w.nii.gz").is_file()
    gate = json.loads((output / "derivatives/bidsapp/sub-01/.log/gate.json").read_text())
    assert "ExamFolder" in {i["field"] for i in gate["phi"]["identifiers"]}
    assert scan_tree(output, Identifiers.collect([], EXAM_NAME)) == []  # NIfTI headers too
    text = (all_text(output) + all_text(tmp_path / "work") + result.stdout + result.stderr).lower()
    assert "not converted" in text, "the planted file name went through the log"
    for needle in (EXAM_NAME, *EXAM_NAME.split()):
        assert needle.lower() not in text, "the exam folder's name leaked"


def test_unshared_source_is_66_naming_the_identity(
    tmp_path: Path, bidsapp: RunCli, emu: Emulator
) -> None:
    private = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    result = bidsapp(
        f"gdrive://{private}",
        tmp_path / "out",
        "participant",
        "--credentials",
        tmp_path / "sa.json",
        env=drive_env(emu),
    )
    assert result.returncode == 66
    (line,) = error_lines(result.stderr)
    assert SA in line and "not shared" in line


def test_a_mistyped_drive_output_is_refused_and_a_missing_one_made_in_its_parent(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, emu: Emulator
) -> None:
    make_exam("01")
    source, out = seed(emu, tmp_path / "source")
    env, key = drive_env(emu), tmp_path / "sa.json"
    src = f"gdrive://{source}"

    def run(output: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return bidsapp(src, output, "participant", "--credentials", key, *extra, env=env)

    # a typo in a folder above OUTPUT: refused before any work, and nothing made
    typo = run(f"gdrive://{out}/studdy/bids")
    assert typo.returncode == 66, typo.stderr
    (line,) = error_lines(typo.stderr)
    assert line.split("ERROR", 1)[1].strip().startswith(f"OUTPUT gdrive://{out}/studdy/bids")
    assert "last folder only" in line
    assert emu.listing(out) == []

    # a dry run reads OUTPUT as OUTPUT, and one that does not exist yet as empty
    dry = run(f"gdrive://{out}/bids", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"OUTPUT gdrive://{out}/bids does not exist yet: a real run creates it" in dry.stderr
    assert "would be converted" in dry.stderr and "SOURCE" not in dry.stderr
    assert emu.listing(out) == []

    # the real run makes the missing last folder, says so once, and publishes into it
    made = run(f"gdrive://{out}/bids")
    assert made.returncode == 0, made.stderr
    assert made.stderr.count("did not exist: created it in its parent folder") == 1
    assert [m["name"] for m in emu.listing(out)] == ["bids"]
    assert "sub-01/anat/sub-01_T1w.nii.gz" in emu.tree(emu.listing(out)[0]["id"])


def every_item(emu: Emulator, folder: str, rel: str = "") -> dict[str, bool]:
    """Every item below a folder, trashed ones included: path → trashed."""
    found: dict[str, bool] = {}
    for meta in emu.listing(folder):
        path = f"{rel}{meta['name']}"
        found[path] = bool(meta.get("trashed"))
        if meta["mimeType"].endswith(".folder"):
            found |= every_item(emu, meta["id"], path + "/")
    return found


@pytest.mark.parametrize("role", ["organizer", "fileOrganizer"])
def test_a_finished_job_leaves_no_lock_or_upload_bookkeeping(
    tmp_path: Path, make_exam: MakeExam, bidsapp: RunCli, emu: Emulator, role: str
) -> None:
    """Two lock files and an upload folder per job: a Manager's job deletes them; a Content
    manager may only trash, so they go to the trash, after one refused delete per process."""
    make_exam("01")
    source = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    emu.upload_tree(tmp_path / "source", parent=source, owner=LAB)
    emu.share(source, SA, role="reader")
    out = emu.shared_drive("BIDS", members={SA: role})
    emu.reset_stats()
    done = bidsapp(
        f"gdrive://{source}", f"gdrive://{out}/bids", "participant",
        "--credentials", tmp_path / "sa.json", env=drive_env(emu),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    items = every_item(emu, out)
    bookkeeping = {
        path: trashed
        for path, trashed in items.items()
        if path.startswith(("bids/.bidsapp/locks/", "bids/.bidsapp/incoming/"))
    }
    refused = [r for r in emu.request_log() if r["op"] == "delete" and r["status"] == 403]
    if role == "organizer":
        assert bookkeeping == {}, bookkeeping
        assert refused == []
    else:
        assert bookkeeping and all(bookkeeping.values()), bookkeeping  # in the trash only
        assert len(refused) == 1
    assert items["bids/sub-01/anat/sub-01_T1w.nii.gz"] is False
