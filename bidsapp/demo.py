"""`bidsapp demo`: synthetic exams → subject map → participant jobs → group, on local folders."""

from __future__ import annotations

import shutil
from pathlib import Path

from bidsapp.stores.local import LocalStore
from bidsapp.subjects import extend_map, write_map
from bidsapp.synthetic import Patient, write_session

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


def run_demo(root: Path) -> int:
    """Build the demo under `root` and run the whole flow; returns the first failing exit code."""
    from bidsapp.cli import main

    root = root.absolute()
    source, output = root / "exams", root / "bids"
    for path in (source, output, root / "work"):
        shutil.rmtree(path, ignore_errors=True)
    source.mkdir(parents=True)
    for seed, (folder, patient) in enumerate(DEMO_PATIENTS, start=1):
        write_session(source / folder, patient=patient, seed=seed, study_date=f"2024010{seed}")
    subject_map = root / "subjects.tsv"
    subjects, _ = extend_map([], LocalStore(source))
    write_map(subject_map, subjects)
    print(f"demo exams in {source}, subject map {subject_map}")
    common = ["--subject-map", str(subject_map), "--work-dir", str(root / "work")]
    code = main([str(source), str(output), "participant", *common])
    group = main([str(source), str(output), "group"])
    print(f"\nBIDS dataset in {output}:")
    print_tree(output)
    return code or group


def print_tree(root: Path, hide: tuple[str, ...] = (".bidsapp",)) -> None:
    """Print every file under root, indented by depth (bookkeeping folders hidden)."""
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in hide:
            continue
        print(f"{'    ' * (len(rel.parts) - 1)}{rel.name}{'/' if path.is_dir() else ''}")
