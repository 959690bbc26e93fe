"""`bidsapp demo`: synthetic exams → Drive (the built-in emulator) → subject map → jobs → group.

Runs the whole flow as it runs against Google Drive, with no Google account: a local Drive v3
emulator plays Google, a service account signs in through its token endpoint, the exams sit in a
lab member's My Drive shared read-only with the service account, and the dataset is published
into a shared drive. `--local` runs the same flow on local folders instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bidsapp.pipeline.subjects import extend_map, write_map
from bidsapp.stores.local import LocalStore
from bidsapp_sandbox.exams import Patient, write_session

# Exam folders are named the way hospitals export them: after the patient. bidsapp must keep
# those names (and the header values) out of everything it publishes.
DEMO_PATIENTS = (
    (
        "Souza Ana 2024-01-02",
        Patient(name="Souza^Ana", patient_id="HOSP4471", birth_date="19810312"),
    ),
    (
        "Lima Bruno 2024-01-05",
        Patient(name="Lima^Bruno", patient_id="HOSP4502", birth_date="19790623"),
    ),
)
SERVICE_ACCOUNT = "bidsapp-demo@demo-project.iam.gserviceaccount.com"
LAB_MEMBER = "lab@example.org"


def _exams(root: Path) -> Path:
    source = root / "exams"
    for path in (source, root / "bids", root / "work", root / "drive"):
        shutil.rmtree(path, ignore_errors=True)
    (root / "subjects.tsv").unlink(missing_ok=True)
    source.mkdir(parents=True)
    for seed, (folder, patient) in enumerate(DEMO_PATIENTS, start=1):
        write_session(source / folder, patient=patient, seed=seed, study_date=f"2024010{seed}")
    return source


IGNORE_ALL = (
    "# Written by 'bidsapp demo': exam folders named after (made-up) patients, a service-account\n"
    "# key and a date secret. Git ignores everything here, wherever this folder is.\n*\n"
)


def run_demo(root: Path, *, local: bool = False) -> int:
    """Build the demo under `root` and run the whole flow; returns the first failing exit code."""
    root = root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # a key and a secret: readable by their owner only
    # Patient-like names, a key and a secret: made never to be committed by accident (as a
    # virtual environment or pytest's cache ignore themselves), even inside a clone.
    (root / ".gitignore").write_text(IGNORE_ALL)
    source = _exams(root)
    return _run_local(root, source) if local else _run_drive(root, source)


def _run_local(root: Path, source: Path) -> int:
    from bidsapp.cli import main

    output = root / "bids"
    subject_map = root / "subjects.tsv"
    subjects, _ = extend_map([], LocalStore(source))
    write_map(subject_map, subjects)
    print(f"demo exams in {source}, subject map {subject_map}")
    common = ["--subject-map", str(subject_map), "--work-dir", str(root / "work")]
    code = main([str(source), str(output), "participant", *common])
    group = main([str(source), str(output), "group", "--work-dir", str(root / "work")])
    print(f"\nBIDS dataset in {output}:")
    print_tree(output)
    return code or group


def _run_drive(root: Path, source: Path) -> int:
    from bidsapp.cli import main
    from bidsapp_sandbox.emulator import Emulator

    with Emulator(state_dir=root / "drive") as emu:
        key = emu.service_account(email=SERVICE_ACCOUNT, dest=root / "service-account.json")
        exams = emu.folder("Exams", parent=emu.my_drive(LAB_MEMBER), owner=LAB_MEMBER)
        emu.upload_tree(source, parent=exams, owner=LAB_MEMBER)
        emu.share(exams, SERVICE_ACCOUNT, role="reader")
        drive = emu.shared_drive("BIDS", members={SERVICE_ACCOUNT: "fileOrganizer"})
        os.environ["BIDSAPP_DRIVE_URL"] = emu.url
        src, out = f"gdrive://{exams}", f"gdrive://{drive}/bids"
        print(f"Drive emulator at {emu.url}; exams in {src}, dataset in {out}")
        subject_map = root / "subjects.tsv"
        # The emulator is local: a budget far above what Google would accept is fine here.
        creds = ["--credentials", str(key)]
        code = main(["subjects", src, "--subject-map", str(subject_map), *creds])
        work = ["--work-dir", str(root / "work"), "--drive-rps", "100", *creds]
        code = code or main([src, out, "participant", "--subject-map", str(subject_map), *work])
        group = main([src, out, "group", *work])
        bids = next(m["id"] for m in emu.listing(drive) if m["name"] == "bids")
        tree = emu.tree(bids)
        print(f"\nBIDS dataset on Drive ({out}):")
        shown: set[str] = set()
        for rel in sorted(tree):
            parts = rel.split("/")
            if parts[0] == ".bidsapp" or ".." in parts:
                continue
            for depth in range(len(parts) - 1):
                folder = "/".join(parts[: depth + 1])
                if folder not in shown:
                    shown.add(folder)
                    print(f"{'    ' * depth}{parts[depth]}/")
            print(f"{'    ' * (len(parts) - 1)}{parts[-1]}")
        # back to disk as a lab would get it: `bidsapp pull`, md5-verified, over HTTP
        copy = root / "bids"
        shutil.rmtree(copy, ignore_errors=True)
        pulled = main(["pull", out, str(copy), "--drive-rps", "100", *creds])
    print(f"\na local copy is in {copy} (git ignores {root}: see its .gitignore)")
    return code or group or pulled


def print_tree(root: Path, hide: tuple[str, ...] = (".bidsapp",)) -> None:
    """Print every file under root, indented by depth (bookkeeping folders hidden)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in hide:
            continue
        print(f"{'    ' * (len(rel.parts) - 1)}{rel.name}{'/' if path.is_dir() else ''}")
