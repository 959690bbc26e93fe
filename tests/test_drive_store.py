"""The Drive store over real HTTP against the emulator: faults, names, access, concurrency.

Real google-api-python-client and google-auth; a service account signs in through the
emulator's token endpoint; backoff is shortened through BIDSAPP_DRIVE_BACKOFF.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from bidsapp_sandbox.emulator import Emulator, Fault
from bidsapp_sandbox.exams import Patient, Series, write_session
from loguru import logger

from bidsapp.errors import (
    CredentialsError,
    LocationNotFound,
    OutputNotWritable,
    TemporaryFailure,
    UsageError,
)
from bidsapp.pipeline.publish import Target, init_shared, publish, published_manifest, repair
from bidsapp.pipeline.stage import stage
from bidsapp.stores import open_store
from bidsapp.stores.drive import DriveStore, escape

SA = "bidsapp@proj.iam.gserviceaccount.com"
LAB = "lab@example.org"
FAST = "0.005,0.05,8,30"
T1 = (Series("anat-T1w", "t1w"),)


@pytest.fixture
def emu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    with Emulator(seed=1) as emulator:
        key = emulator.service_account(email=SA, dest=tmp_path / "sa.json")
        monkeypatch.setenv("BIDSAPP_DRIVE_URL", emulator.url)
        monkeypatch.setenv("BIDSAPP_CREDENTIALS", str(key))
        monkeypatch.setenv("BIDSAPP_DRIVE_BACKOFF", FAST)
        monkeypatch.setenv("BIDSAPP_DRIVE_RPS", "500")
        monkeypatch.setenv("BIDSAPP_DRIVE_WORKERS", "4")
        yield emulator


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def seed_source(emu: Emulator) -> tuple[str, dict[str, bytes]]:
    """A lab's exam folder shared read-only with the service account; returns (id, files)."""
    root = emu.my_drive(LAB)
    source = emu.folder("exams", parent=root, owner=LAB)
    exam = emu.folder("Souza Ana", parent=source, owner=LAB)
    series = emu.folder("series 1", parent=exam, owner=LAB)
    files = {f"series 1/{n:03d}.dcm": os.urandom(3000 + n) for n in range(3)}
    files["big.zip"] = os.urandom(700_000)  # three Range chunks of 256 KiB
    for rel, data in files.items():
        emu.file(rel.split("/")[-1], data, parent=series if "/" in rel else exam, owner=LAB)
    elsewhere = emu.folder("elsewhere", parent=source, owner=LAB)
    target = emu.file("linked.dcm", b"via a shortcut" * 100, parent=elsewhere, owner=LAB)
    emu.shortcut("shortcut.dcm", target=target, parent=exam, owner=LAB)  # listed, not followed
    # at SOURCE's top level a shortcut is an exam folder kept elsewhere: followed
    emu.shortcut("Souza Ana (link)", target=exam, parent=source, owner=LAB)
    emu.share(source, SA, role="reader")
    return source, files


def output_drive(emu: Emulator) -> str:
    return emu.shared_drive("BIDS", members={SA: "fileOrganizer"})


def small_chunks(store: DriveStore) -> DriveStore:
    store.chunk = 256 * 1024
    store.resumable_above = 256 * 1024
    return store


def stage_and_publish(emu: Emulator, tmp: Path, source_id: str, out_id: str) -> dict[str, str]:
    """Download the exam and publish it by the publish protocol; returns staged md5s by path."""
    source = small_chunks(open_store(f"gdrive://{source_id}"))  # type: ignore[arg-type]
    assert [e.is_dir for e in source.list("") if e.name == "Souza Ana (link)"] == [True]
    walked = [(rel, e) for rel, e in source.walk("Souza Ana") if not e.skipped]
    dest = tmp / "download"
    dest.mkdir(parents=True, exist_ok=True)
    items = [(f"Souza Ana/{rel}", dest / f"{n:03d}") for n, (rel, _) in enumerate(walked)]
    md5s = source.download_many(items)
    staged = {rel: md5((dest / f"{n:03d}").read_bytes()) for n, (rel, _) in enumerate(walked)}
    assert md5s == list(staged.values())

    output = small_chunks(open_store(f"gdrive://{out_id}/study", for_output=True))  # type: ignore[arg-type]
    init_shared(output)
    data = tmp / "bids" / "sub-01"
    for n in range(len(walked)):
        target = data / "anat" / f"file{n}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((dest / f"{n:03d}").read_bytes())
    deriv = tmp / "deriv"
    deriv.mkdir(exist_ok=True)
    (deriv / "gate.json").write_text('{"passed": true}\n')
    with output.lock("sub-01"):
        repair(output, Target("01"))
        publish(output, Target("01"), {"data": data, "deriv": deriv}, {"run_id": "r1"})
    return staged


def check_published(emu: Emulator, out_id: str, files: dict[str, bytes]) -> None:
    study = next(m["id"] for m in emu.listing(out_id) if m["name"] == "study")
    tree = emu.tree(study)  # raises when two files share a path
    data = {p: c for p, c in tree.items() if p.startswith("sub-01/")}
    assert sorted(md5(c) for c in data.values()) == sorted(md5(c) for c in files.values())
    manifest = json.loads(tree["derivatives/bidsapp/sub-01/.log/manifest.json"])
    assert {f["path"] for f in manifest["files"]} == set(data) | {
        "derivatives/bidsapp/sub-01/.log/gate.json"
    }
    assert not [p for p in tree if p.startswith((".bidsapp/incoming/", ".bidsapp/replaced/"))]
    assert_no_duplicate_names(emu, study)


def assert_no_duplicate_names(emu: Emulator, folder: str) -> None:
    live = [m for m in emu.listing(folder) if not m.get("trashed")]
    names = [m["name"] for m in live]
    assert len(names) == len(set(names)), f"duplicates: {sorted(names)}"
    for m in live:
        if m["mimeType"] == "application/vnd.google-apps.folder":
            assert_no_duplicate_names(emu, m["id"])


def test_stage_and_publish_round_trip(emu: Emulator, tmp_path: Path) -> None:
    source, files = seed_source(emu)
    out = output_drive(emu)
    staged = stage_and_publish(emu, tmp_path, source, out)
    assert sorted(staged.values()) == sorted(md5(c) for c in files.values())
    check_published(emu, out, files)
    # A rerun publishes again into the same folders: still one folder per name.
    stage_and_publish(emu, tmp_path / "again", source, out)
    check_published(emu, out, files)


FAULT_KINDS = ("rate403", "userRate403", "429", "500", "503", "reset", "truncate")
REQUEST_KINDS = ("list", "get", "media", "create", "update", "upload")


@pytest.mark.parametrize("on", REQUEST_KINDS)
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_on_every_request_kind(
    kind: str, on: str, emu: Emulator, tmp_path: Path
) -> None:
    source, files = seed_source(emu)
    out = output_drive(emu)
    emu.set_faults([Fault(kind=kind, on=on, every=3)], seed=3)
    staged = stage_and_publish(emu, tmp_path, source, out)
    assert emu.stats()["faults_injected"] > 0, "the fault never fired"
    emu.set_faults([])
    assert sorted(staged.values()) == sorted(md5(c) for c in files.values())
    check_published(emu, out, files)


def test_an_expiring_token_is_refreshed(emu: Emulator, tmp_path: Path) -> None:
    source, files = seed_source(emu)
    out = output_drive(emu)
    emu.set_faults([Fault(kind="token_expiry", on="any", every=7)], seed=1)
    stage_and_publish(emu, tmp_path, source, out)
    assert emu.stats()["token_requests"] > 2
    emu.set_faults([])
    check_published(emu, out, files)


@pytest.mark.parametrize(("kind", "attempts"), [("503", 8), ("reset", 8), ("daily403", 1)])
def test_faults_that_never_stop_end_in_75_with_nothing_published(
    kind: str, attempts: int, emu: Emulator, tmp_path: Path
) -> None:
    source, _ = seed_source(emu)
    out = output_drive(emu)
    emu.set_faults([Fault(kind=kind, on="upload")], seed=1)
    started = time.monotonic()
    with pytest.raises(TemporaryFailure) as info:
        stage_and_publish(emu, tmp_path, source, out)
    assert info.value.exit_code == 75
    assert time.monotonic() - started < 30, "bounded by the backoff settings"
    uploads = emu.stats()["by_kind"]["upload"]
    assert uploads == 1 if attempts == 1 else uploads >= attempts, "daily limits are not retried"
    emu.set_faults([])
    output = open_store(f"gdrive://{out}/study", for_output=True)
    assert published_manifest(output, Target("01")) is None
    assert not output.exists("sub-01")


def test_hostile_names_stage_safely(emu: Emulator, tmp_path: Path) -> None:
    root = emu.my_drive(LAB)
    source = emu.folder("exams", parent=root, owner=LAB)
    exam = emu.folder("exam", parent=source, owner=LAB)
    local = tmp_path / "dicom"
    dicoms = write_session(local, patient=Patient(), series=(Series("anat-T1w", "t1w"),), seed=1)
    names = ["../../evil", "/etc/x", "a\x01b\nc\x7f", "é" * 150, "..", "%2F", "ok.dcm"]
    for name, path in zip(names, dicoms, strict=False):
        emu.file(name, path.read_bytes(), parent=exam, owner=LAB)
    emu.share(source, SA)
    store = open_store(f"gdrive://{source}")
    assert {e.name for e in store.list("exam")} == {escape(n) for n in names}
    work = tmp_path / "work"
    result = stage(store, "exam", work)
    assert result.files == len(names)
    inside = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    assert inside == [f"dicom/study-1/{n:06d}.dcm" for n in range(1, len(names) + 1)]
    assert not (tmp_path / "evil").exists() and not Path("/etc/x").exists()


def test_w1_a_shortcut_inside_an_exam_is_listed_not_followed(emu: Emulator, tmp_path: Path) -> None:
    """Another patient's file reached through a shortcut in the exam folder is never staged."""
    root = emu.my_drive(LAB)
    source = emu.folder("exams", parent=root, owner=LAB)
    exam = emu.folder("Souza Ana", parent=source, owner=LAB)
    other = emu.folder("Lima Rui", parent=source, owner=LAB)
    mine = write_session(
        tmp_path / "mine", patient=Patient(name="Souza^Ana", patient_id="P1"), series=T1
    )
    theirs = write_session(
        tmp_path / "theirs", patient=Patient(name="Lima^Rui", patient_id="P2"), series=T1, seed=2
    )
    for path in mine:
        emu.file(path.name, path.read_bytes(), parent=exam, owner=LAB)
    target = emu.file("t1.dcm", theirs[0].read_bytes(), parent=other, owner=LAB)
    emu.shortcut("zz-shortcut.dcm", target=target, parent=exam, owner=LAB)
    emu.shortcut("zz-folder", target=other, parent=exam, owner=LAB)
    emu.share(source, SA)

    result = stage(open_store(f"gdrive://{source}"), "Souza Ana", tmp_path / "work")

    assert result.files == len(mine)
    assert sorted(result.skipped) == [
        ("zz-folder", "Drive shortcut (not followed)"),
        ("zz-shortcut.dcm", "Drive shortcut (not followed)"),
    ]
    assert {str(h["PatientID"]) for h in result.headers} == {"P1"}


def test_quotes_backslashes_and_duplicate_folder_names(emu: Emulator) -> None:
    root = emu.my_drive(LAB)
    source = emu.folder("exams", parent=root, owner=LAB)
    odd = "O'Brien \\ \"Jr\" 'x'"
    folder = emu.folder(odd, parent=source, owner=LAB)
    emu.file("a.dcm", b"1", parent=folder, owner=LAB)
    first = emu.folder("Dup", parent=source, owner=LAB)
    emu.file("one", b"first", parent=first, owner=LAB)
    emu.folder("Dup", parent=source, owner=LAB)
    emu.share(source, SA)
    store = open_store(f"gdrive://{source}")
    assert [rel for rel, _ in store.walk(escape(odd))] == ["a.dcm"]
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        entries = [e for e in store.list("") if e.name == "Dup"]
        assert len(entries) == 2 and len({e.ref for e in entries}) == 2
        assert [rel for rel, _ in store.walk("Dup")] == ["one"], "the oldest is used"
    finally:
        logger.remove(sink)
    assert any("share" in w and "name" in w for w in warnings)
    # Either copy can be addressed by id.
    assert [rel for rel, _ in store.walk(entries[1].ref)] in (["one"], [])


def test_unshared_source_names_both_causes_and_the_identity(emu: Emulator) -> None:
    private = emu.folder("private", parent=emu.my_drive(LAB), owner=LAB)
    with pytest.raises(LocationNotFound) as info:
        open_store(f"gdrive://{private}")
    assert info.value.exit_code == 66
    assert "not shared" in str(info.value) and SA in str(info.value)


def test_service_account_aimed_at_my_drive_is_told_before_any_work(emu: Emulator) -> None:
    """Google gives service accounts no storage: every upload into a My Drive would fail with
    storageQuotaExceeded after the conversion; opening OUTPUT says so first, and makes nothing."""
    folder = emu.folder("bids", parent=emu.my_drive(LAB), owner=LAB)
    emu.share(folder, SA, role="writer")
    with pytest.raises(OutputNotWritable) as info:
        open_store(f"gdrive://{folder}", for_output=True)
    assert info.value.exit_code == 73
    assert "My Drive" in str(info.value) and "shared drive" in info.value.hint
    assert emu.listing(folder) == []
    # reading from a My Drive is what a service account can do: SOURCE opens
    assert open_store(f"gdrive://{folder}").list("") == []


def test_revoked_user_token_is_77_with_the_testing_mode_hint(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
    token = emu.user_token(email=LAB, dest=tmp_path / "token.json")
    monkeypatch.setenv("BIDSAPP_CREDENTIALS", str(token))
    assert open_store(f"gdrive://{folder}").list("") == []
    emu.revoke(LAB)
    with pytest.raises(CredentialsError) as info:
        open_store(f"gdrive://{folder}")
    assert info.value.exit_code == 77 and "Testing" in info.value.hint


def test_read_only_token_aimed_at_output_is_one_sentence(
    emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auth login --readonly`, then a run that publishes: Google refuses the write scope with
    invalid_scope, and the user reads what to do, not google-auth's (message, response) tuple."""
    out = emu.shared_drive("BIDS", members={LAB: "organizer"})
    token = emu.user_token(
        email=LAB,
        dest=tmp_path / "token.json",
        scopes=("https://www.googleapis.com/auth/drive.readonly",),
    )
    monkeypatch.setenv("BIDSAPP_CREDENTIALS", str(token))
    assert open_store(f"gdrive://{out}").list("") == []  # reading is what it was granted
    with pytest.raises(CredentialsError) as info:
        open_store(f"gdrive://{out}", for_output=True)
    line = info.value.one_line()
    assert info.value.exit_code == 77 and "\n" not in line
    assert "was not granted full Drive access" in line and "--readonly" in line
    assert not re.search(r"[({]'", line), line  # no printed Python tuple or dict


def test_six_jobs_publish_into_one_dataset_at_once(emu: Emulator, tmp_path: Path) -> None:
    out = output_drive(emu)
    emu.latency = 0.02  # every request waits, so the jobs' requests interleave
    errors: list[BaseException] = []

    def job(n: int) -> None:
        try:
            store = open_store(f"gdrive://{out}/study", for_output=True)
            init_shared(store)  # racing on purpose: no `group --init` first
            data = tmp_path / f"job{n}" / "data"
            (data / "anat").mkdir(parents=True)
            (data / "anat" / f"sub-0{n}_T1w.nii.gz").write_bytes(f"image {n}".encode())
            deriv = tmp_path / f"job{n}" / "deriv"
            deriv.mkdir()
            (deriv / "gate.json").write_text("{}\n")
            target = Target(f"0{n}")
            with store.lock(f"sub-0{n}"):
                repair(store, target)
                publish(store, target, {"data": data, "deriv": deriv}, {"run_id": f"r{n}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    study = next(m["id"] for m in emu.listing(out) if m["name"] == "study")
    assert_no_duplicate_names(emu, study)
    tree = emu.tree(study)
    for n in range(1, 7):
        assert tree[f"sub-0{n}/anat/sub-0{n}_T1w.nii.gz"] == f"image {n}".encode()
        assert f"derivatives/bidsapp/sub-0{n}/.log/manifest.json" in tree


def test_lock_excludes_and_a_stale_lock_is_taken_over(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = output_drive(emu)
    monkeypatch.setenv("BIDSAPP_DRIVE_LOCK_STALE", "1.5")
    store = open_store(f"gdrive://{out}", for_output=True)
    locks = store._folder(".bidsapp/locks", create=True)  # type: ignore[attr-defined]
    emu.file(f"sub-01.{'0' * 32}.lock", b"dead job", parent=locks)  # never refreshed
    inside, most = [0], [0]
    guard = threading.Lock()

    def contender() -> None:
        mine = open_store(f"gdrive://{out}", for_output=True)
        with mine.lock("sub-01"):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.3)
            with guard:
                inside[0] -= 1

    threads = [threading.Thread(target=contender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert most[0] == 1, "two holders at once"
    names = [m["name"] for m in emu.listing(locks) if not m.get("trashed")]
    assert names == [], "every lock file, the stale one included, is gone"


def test_a_job_waiting_on_a_stale_lock_says_on_what_and_until_when(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = output_drive(emu)
    monkeypatch.setenv("BIDSAPP_DRIVE_LOCK_STALE", "3")
    store = open_store(f"gdrive://{out}", for_output=True)
    locks = store._folder(".bidsapp/locks", create=True)  # type: ignore[attr-defined]
    dead = f"sub-01.{'0' * 32}.lock"
    emu.file(dead, b"a killed job", parent=locks)  # never refreshed
    said: list[str] = []
    sink = logger.add(lambda m: said.append(str(m)), level="WARNING", format="{message}")
    started = datetime.now()
    try:
        with store.lock("sub-01"):
            waited = (datetime.now() - started).total_seconds()
    finally:
        logger.remove(sink)
    waiting = [m for m in said if m.startswith("waiting for the lock")]
    assert len(waiting) == 1, said
    assert "sub-01" in waiting[0] and dead in waiting[0]
    until = datetime.strptime(waiting[0].split("at the latest ")[1][:8], "%H:%M:%S")
    ahead = (until - started.replace(year=1900, month=1, day=1, microsecond=0)).seconds
    assert ahead <= 5, "within the 3 s the stale lock has left (and a second of rounding)"
    assert waited >= 1.0, "it did wait for the stale lock"


def test_requests_never_exceed_the_budget_plus_its_burst(
    emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIDSAPP_DRIVE_RPS", "20")
    source, _ = seed_source(emu)
    store = open_store(f"gdrive://{source}")
    emu.reset_stats()
    for _ in range(30):
        store.list("Souza Ana")
    stats = emu.stats()
    assert stats["requests"] >= 30
    assert stats["max_rps_1s"] <= 20 + 10


def test_uploads_into_a_folder_the_store_made_need_no_lookups(
    emu: Emulator, tmp_path: Path
) -> None:
    out = output_drive(emu)
    store = open_store(f"gdrive://{out}", for_output=True)
    local = {f"f{n}.bin": os.urandom(1000 + n) for n in range(12)}
    for name, data in local.items():
        (tmp_path / name).write_bytes(data)
    emu.reset_stats()
    run = ".bidsapp/incoming/01-r1"
    md5s = store.upload_many([(tmp_path / n, f"{run}/data/anat/{n}") for n in local])
    assert md5s == [md5(d) for d in local.values()]
    kinds = emu.stats()["by_kind"]
    assert kinds["upload"] == len(local)
    assert kinds.get("list", 0) <= 2, "only .bidsapp was looked up (and listed once made)"
    # A create whose reply is lost is found before it is retried, never duplicated.
    emu.set_faults([Fault(kind="reset", on="upload", every=2)], seed=1)
    again = store.upload_many([(tmp_path / n, f"{run}-2/data/{n}") for n in local])
    assert again == md5s and emu.stats()["faults_injected"] >= 5
    emu.set_faults([])
    tree = emu.tree(out)  # raises on two files at one path
    assert {p: c for p, c in tree.items() if p.startswith(f"{run}-2/")} == {
        f"{run}-2/data/{n}": d for n, d in local.items()
    }
    # Rewriting a file the store made updates it in place.
    store.write_bytes(f"{run}/data/anat/f0.bin", b"new")
    assert emu.tree(out)[f"{run}/data/anat/f0.bin"] == b"new"


def test_shared_drives_are_addressed_by_name(emu: Emulator) -> None:
    lab = emu.shared_drive("Lab Data", members={SA: "fileOrganizer"})
    for _ in range(2):
        emu.shared_drive("BIDS", members={SA: "fileOrganizer"})
    emu.shared_drive("Other", members={LAB: "organizer"})  # not visible to the service account
    with pytest.raises(LocationNotFound, match="Lab Data/study/bids was not found") as typo:
        open_store("gdrive:/Shared drives/Lab Data/study/bids", for_output=True)
    assert "last folder only" in typo.value.hint and emu.listing(lab) == []
    emu.folder("study", parent=lab)
    store = open_store("gdrive:/Shared drives/Lab Data/study/bids", for_output=True)
    store.write_bytes("sub-01/x.txt", b"1")
    assert emu.tree(lab) == {"study/bids/sub-01/x.txt": b"1"}
    assert [e.name for e in open_store("gdrive:/Shared drives/Lab Data").list("")] == ["study"]
    with pytest.raises(UsageError, match="2 shared drives are named 'BIDS'") as dup:
        open_store("gdrive:/Shared drives/BIDS/x")
    assert "gdrive://DRIVE_ID" in dup.value.hint
    with pytest.raises(LocationNotFound, match=SA) as missing:
        open_store("gdrive:/Shared drives/Other")
    assert missing.value.exit_code == 66


def test_the_source_is_opened_read_only_and_the_output_writable(emu: Emulator) -> None:
    source_id, _ = seed_source(emu)
    emu.share(source_id, SA, role="writer")  # only the token's scope can refuse a write now
    out = output_drive(emu)
    source = open_store(f"gdrive://{source_id}")
    output = open_store(f"gdrive://{out}", for_output=True)
    output.write_bytes("sub-01/probe.txt", b"ok")
    with pytest.raises(CredentialsError, match="scope") as info:
        source.make_folder("sub-99")
    assert info.value.exit_code == 77
    assert emu.tree(out) == {"sub-01/probe.txt": b"ok"}
    assert "sub-99" not in {m["name"] for m in emu.listing(source_id)}
    assert emu.stats()["by_status"].get(403) == 1
