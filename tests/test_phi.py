"""Tests for bidsapp.privacy.phi: tokens, identifier collection, find/redact, scan_tree."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom import Dataset

from bidsapp.privacy.phi import (
    FOLDER_FIELD,
    Hit,
    Identifier,
    Identifiers,
    Ignored,
    normalize,
    scan_tree,
    tokenize,
)

SHORT = "too short to identify (<3 characters)"


def ids_of(**header: object) -> Identifiers:
    return Identifiers.collect([header], None)


def tokens_of(ids: Identifiers, field: str) -> set[tuple[str, ...]]:
    """The values and name parts (not the other written forms derived from them)."""
    return {i.tokens for i in ids.identifiers if i.field == field and i.kind != "form"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("JOÃO", "joao"),
        ("Jo\u0061\u0303o", "joao"),  # decomposed accent
        ("Straße", "strasse"),
        ("\uff21\uff22\uff23\uff11", "abc1"),  # full width "ABC1"
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Doe^João-2", ("doe", "joao", "2")),
        ("19800101", ("19800101",)),
        ("id_1234.json", ("id", "1234", "json")),
        ("  ***  ", ()),
        ("sub-01_ses-1", ("sub", "01", "ses", "1")),
        ("Jose\u0301 Ålvarez", ("jose", "alvarez")),
        ("Иван", ("иван",)),  # non-Latin letters still make tokens
    ],
)
def test_tokenize(text: str, expected: tuple[str, ...]) -> None:
    assert tokenize(text) == expected


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("1234", True),
        ("id_1234.json", True),
        ("ID: 1234.", True),
        ("12345", False),
        ("a1234", False),
        ("01234", False),
        ("1234a", False),
        ("12-34", False),
    ],
)
def test_whole_tokens_only(text: str, hit: bool) -> None:
    assert ids_of(PatientID="1234").find(text) == (["PatientID"] if hit else [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Silva^João^^^", {("silva", "joao"), ("silva",), ("joao",)}),
        ("Jo^Silva", {("jo", "silva"), ("silva",)}),
        ("Smith", {("smith",)}),
        (
            "de la Cruz^Ana Maria",
            {("de", "la", "cruz", "ana", "maria"), ("cruz",), ("ana",), ("maria",)},
        ),
        # two-character ideographic parts are too short alone, not together
        (
            "Yamada^Tarou=山田^太郎",
            {("yamada", "tarou"), ("yamada",), ("tarou",), ("山田", "太郎")},
        ),
    ],
)
def test_person_name_whole_and_parts(name: str, expected: set[tuple[str, ...]]) -> None:
    assert tokens_of(ids_of(PatientName=name), "PatientName") == expected


def test_short_name_part_is_listed_as_ignored() -> None:
    ids = ids_of(PatientName="Jo^Silva")
    assert Ignored("PatientName", "name part: " + SHORT) in ids.ignored


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("João", True),
        ("JOAO", True),
        ("joão", True),
        ("Joa\u0303o", True),
        ("silva_joao.txt", True),
        ("Joaozinho", False),
        ("Jo Silva", True),  # the part "silva" alone
        ("Joaquim Silveira", False),
    ],
)
def test_accents_and_case(text: str, hit: bool) -> None:
    ids = ids_of(PatientName="Silva^João")
    assert ids.find(text) == (["PatientName"] if hit else [])


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("born 19750312", True),
        ("born 1975-03-12", True),
        ("1975_03_12", True),
        ("1975-03-13", False),
        ("1975", False),
        ("12-03-1975", True),
        ("197503", False),
    ],
)
def test_birth_date_forms(text: str, hit: bool) -> None:
    ids = ids_of(PatientBirthDate="19750312")
    assert ids.find(text) == (["PatientBirthDate"] if hit else [])


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("PatientName", None, "empty"),
        ("PatientName", "", "empty"),
        ("PatientName", "^^", "empty"),
        ("PatientID", "***", "no letters or digits (placeholder)"),
        ("PatientBirthDate", "***", "no letters or digits (placeholder)"),
        ("PatientBirthDate", "", "empty"),
        ("PatientName", "Anonymous", "anonymisation placeholder"),
        ("PatientName", "ANONYMIZED^", "anonymisation placeholder"),
        ("PatientName", "Anonymous^Patient", "anonymisation placeholder"),
        ("PatientID", "anon", "anonymisation placeholder"),
        ("PatientID", "De-identified", "anonymisation placeholder"),
        ("PatientID", "removed", "anonymisation placeholder"),
        ("PatientID", "N/A", "anonymisation placeholder"),
        ("PatientID", "NA", "anonymisation placeholder"),
        ("PatientID", "none", "anonymisation placeholder"),
        ("PatientID", "unknown", "anonymisation placeholder"),
        ("PatientID", "XXXX", "anonymisation placeholder"),
        ("PatientID", "0000000", "anonymisation placeholder"),
        ("PatientName", "DICOM", "common word"),
        ("PatientName", "Test", "common word"),
        ("PatientName", "Phantom", "common word"),
        ("PatientName", "patient", "common word"),
        ("PatientName", "Subject", "common word"),
        ("PatientID", "7", SHORT),
        ("PatientID", "AB-12", SHORT),
        ("AccessionNumber", "", "empty"),
        ("OtherPatientIDs", [], "empty"),
        ("PatientBirthDate", "00000000", "anonymisation placeholder"),
    ],
)
def test_placeholders_ignored(field: str, value: object, reason: str) -> None:
    ids = ids_of(**{field: value})
    assert not [i for i in ids.identifiers if i.field == field]
    assert Ignored(field, reason) in ids.ignored
    if isinstance(value, str) and tokenize(value):
        probe = Identifiers([Identifier(field, tokenize(value))])
        assert not probe.find(repr(ids.ignored) + json.dumps(ids.to_json()))


@pytest.mark.parametrize(
    ("field", "value", "tokens"),
    [
        ("PatientID", "phantom7-sid9", ("phantom7", "sid9")),
        ("PatientID", "Test-4711", ("test", "4711")),
        ("PatientID", "123", ("123",)),
        ("AccessionNumber", "ACC-99881", ("acc", "99881")),
        ("PatientName", "Anonymous^Carla", ("anonymous", "carla")),
    ],
)
def test_multi_token_value_kept_when_one_token_is_meaningful(
    field: str, value: str, tokens: tuple[str, ...]
) -> None:
    assert tokens in tokens_of(ids_of(**{field: value}), field)


def test_other_patient_ids_and_pydicom_dataset() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    ds.PatientID = "12345"
    ds.OtherPatientIDs = ["OTH-777", "9"]
    ds.PatientBirthDate = "19750312"
    ds.AccessionNumber = "A5566"
    ids = Identifiers.collect([ds], None)
    assert tokens_of(ids, "OtherPatientIDs") == {("oth", "777")}
    assert Ignored("OtherPatientIDs", SHORT) in ids.ignored
    assert ids.find("Doe John 12345 OTH_777 A5566 1975-03-12") == [
        "PatientName",
        "PatientID",
        "OtherPatientIDs",
        "PatientBirthDate",
        "AccessionNumber",
    ]


@pytest.mark.parametrize(
    ("folder", "label", "tokens", "reason"),
    [
        ("Maria Souza 2021-03-04", "01", ("maria", "souza", "2021", "03", "04"), None),
        ("sub-01", "01", None, "folder name is the participant label"),
        ("01", "01", None, "folder name is the participant label"),
        ("SUB_Paciente7", "sub-paciente7", None, "folder name is the participant label"),
        ("sub-01", None, None, "common word"),
        ("DICOM", "02", None, "common word"),
        ("ana_silva", "01", ("ana", "silva"), None),
    ],
)
def test_exam_folder(
    folder: str, label: str | None, tokens: tuple[str, ...] | None, reason: str | None
) -> None:
    ids = Identifiers.collect([], folder, label)
    if tokens is None:
        assert not ids.identifiers
        assert ids.ignored == (Ignored(FOLDER_FIELD, str(reason)),)
    else:
        assert tokens_of(ids, FOLDER_FIELD) == {tokens}


def test_headers_may_be_a_generator_and_missing_fields_are_empty() -> None:
    ids = Identifiers.collect(({"PatientID": v} for v in ("ZZ123", None)), None)
    assert tokens_of(ids, "PatientID") == {("zz123",)}
    assert Ignored("PatientName", "empty") in ids.ignored
    assert Ignored("PatientID", "empty") in ids.ignored  # from the second header


def test_dedup_order_and_merge() -> None:
    a = Identifiers.collect([{"PatientID": "12345"}, {"PatientID": "12345"}], "Ana Silva")
    b = Identifiers.collect([{"PatientName": "Silva^Ana", "PatientID": "12345"}], None)
    merged = a.merge(b)
    assert merged.identifiers == b.merge(a).identifiers
    assert [i.field for i in merged.identifiers if i.kind != "form"] == [
        "PatientName",
        "PatientName",
        "PatientName",
        "PatientID",
        FOLDER_FIELD,
    ]
    assert len(merged.identifiers) == len(set(merged.identifiers))
    assert merged.find("ana silva") == ["PatientName", FOLDER_FIELD]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Patient Doe^John, ID 12345 in /data/Doe_John/x.dcm",
            "Patient [REDACTED], ID [REDACTED] in /data/[REDACTED]/x.dcm",
        ),
        ("nothing here 123456", "nothing here 123456"),
        ("DOE-12345.json", "[REDACTED]-[REDACTED].json"),
        ("Dr. John Smith", "Dr. [REDACTED] Smith"),
        ("São Dóe\u0301 x", "São [REDACTED] x"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    ids = ids_of(PatientName="Doe^John", PatientID="12345")
    assert ids.redact(text) == expected


def test_to_json_and_repr_hold_no_values() -> None:
    ids = ids_of(PatientName="Silva^João", PatientID="ZX81", PatientBirthDate="***")
    report = ids.to_json()
    assert report["identifiers"][0] == {"field": "PatientName", "count_of_tokens": 2}
    assert {"field": "PatientBirthDate", "reason": "no letters or digits (placeholder)"} in (
        report["not_treated_as_identifiers"]
    )
    text = json.dumps(report) + repr(ids) + repr(ids.identifiers) + repr(ids.ignored)
    for value in ("silva", "joao", "zx81"):
        assert value not in text.casefold()


def test_identifier_repr_hides_tokens() -> None:
    assert "secret" not in repr(Identifier("PatientID", ("secret",)))


def test_find_is_fast_enough_for_logs() -> None:
    ids = Identifiers.collect(
        [{"PatientID": f"ID{n:05d}", "PatientName": f"Name{n}^Given{n}"} for n in range(200)], None
    )
    line = "2024-01-01 12:00:00 INFO converting series 7 of /data/exam/ser0007 " * 4
    import time

    start = time.perf_counter()
    for _ in range(2000):
        ids.find(line)
    assert time.perf_counter() - start < 2.0


# --- scan_tree ----------------------------------------------------------------------------------

NAME, PID, BIRTH, ACC = "Doe^João", "PX-4711", "19750312", "ACC998877"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sourcedata" / "Joao_Doe").mkdir(parents=True)
    (root / "sourcedata" / "Joao_Doe" / "clean.txt").write_text("nothing\n")
    (root / "sub-01" / "Doe_Joao_notes.txt").write_text("just notes\n")
    sidecar = {
        "EchoTime": 0.03,
        "PX-4711": "key must not hit",
        "Extra": {"Ids": ["x", "ref px_4711 here"], "Count": 3},
    }
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps(sidecar))
    (root / "participants.tsv").write_text(
        "participant_id\tbirth\tage\nsub-01\t1975-03-12\t40\nsub-02\tn/a\t33\n"
    )
    img = nib.Nifti1Image(np.zeros((2, 2, 2), dtype=np.int16), np.eye(4))
    img.header["descrip"] = b"scan of JOAO DOE"
    nib.save(img, root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    (root / "code").mkdir()
    (root / "code" / "convert.log").write_text("start\nfetching acc998877 from PACS\nend\n")
    (root / "code" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n Doe Joao " + bytes(range(256)))
    (root / "README").write_text("A clean dataset.\n")
    (root / "dataset_description.json").write_text('{"Name": "study", "Authors": ["B. Author"]}')
    return root


def test_scan_tree(tree: Path) -> None:
    ids = Identifiers.collect(
        [
            {
                "PatientName": NAME,
                "PatientID": PID,
                "PatientBirthDate": BIRTH,
                "AccessionNumber": ACC,
            }
        ],
        "Souza_Maria_2021-03-04",
        "01",
    )
    hits = scan_tree(tree, ids)
    assert hits == [
        Hit("AccessionNumber", "code/convert.log", "text line 2"),
        Hit("PatientBirthDate", "participants.tsv", "TSV column birth"),
        Hit("PatientName", "sourcedata/[REDACTED]_[REDACTED]", "folder name"),
        Hit("PatientName", "sub-01/[REDACTED]_notes.txt", "file name"),
        Hit("PatientID", "sub-01/anat/sub-01_T1w.json", "JSON value at /Extra/Ids/1"),
        Hit("PatientName", "sub-01/anat/sub-01_T1w.nii.gz", "NIfTI header descrip"),
    ]
    assert scan_tree(tree, ids) == hits  # deterministic
    text = (repr(hits) + json.dumps(ids.to_json()) + repr(ids)).casefold()
    for value in (NAME, PID, BIRTH, ACC, "1975-03-12", "Souza_Maria"):
        assert value.casefold() not in text
    words = set(tokenize(text))
    for ident in ids.identifiers:
        for token in ident.tokens:
            assert token not in words, ident.field


def test_scan_tree_edge_files(tmp_path: Path) -> None:
    ids = ids_of(PatientID="PX-4711", PatientName="João")
    (tmp_path / "a.json").write_text(json.dumps({"PX-4711": {"n": "px 4711"}}))
    (tmp_path / "broken.json").write_text('{"a": "PX 4711"')
    (tmp_path / "noext").write_text("line1\nPX4711 PX_4711\n")
    (tmp_path / "legacy.txt").write_bytes(b"ok\nname: Jo\xe3o\n")  # latin-1, not UTF-8
    (tmp_path / "blob").write_bytes(b"\xff\xfe PX 4711 \x00")  # binary without suffix
    (tmp_path / "t.tsv").write_text("a\tb\nx\ty\tpx-4711\n")
    assert scan_tree(tmp_path, ids) == [
        Hit("PatientID", "a.json", "JSON value at /[REDACTED]/n"),
        Hit("PatientID", "broken.json", "text line 1"),
        Hit("PatientName", "legacy.txt", "text line 2"),
        Hit("PatientID", "noext", "text line 2"),
        Hit("PatientID", "t.tsv", "TSV column #3"),
    ]


def test_scan_tree_without_identifiers(tree: Path) -> None:
    assert scan_tree(tree, Identifiers()) == []


def test_utf8_read_as_latin1_still_matches() -> None:
    # dcm2niix writes UTF-8 names decoded as Latin-1 into sidecars.
    ids = Identifiers.collect([{"PatientName": "Gonçalves^João"}], None)
    assert ids.find('"PatientName": "GonÃ§alves^JoÃ£o"') == ["PatientName"]
    assert ids.find("JoÃ£o") == ["PatientName"]
    assert ids.find("Ã© clean") == []


# --- other written forms (issue 16: P2, P3) -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("Wu Di", True),
        ("di, wu", True),
        ("WU^DI", True),
        ("sub-01_wu_di.json", True),
        ("WuDi", True),
        ("DIWU", True),
        ("Wu", False),
        ("Di 3", False),
        ("Wu Xi Di", False),
    ],
)
def test_p2_short_name_parts_identify_together(text: str, hit: bool) -> None:
    ids = ids_of(PatientName="Wu^Di")
    assert ids.find(text) == (["PatientName"] if hit else [])
    assert ids.find(ids.redact(text)) == []


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("JoaoConceicao", True),
        ("JOAOCONCEICAO_T1w", True),
        ("ConceiçãoJoão", True),
        ("joaodaconceicao", True),
        ("Joaozinho", False),
        ("Conceicaos", False),
    ],
)
def test_p3_name_parts_run_together(text: str, hit: bool) -> None:
    ids = ids_of(PatientName="Conceição^João^da")
    assert ids.find(text) == (["PatientName"] if hit else [])
    assert ids.find(ids.redact(text)) == []


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("born 12/03/1975", True),
        ("12.03.1975", True),
        ("1975/03/12", True),
        ("03/12/1975", True),
        ("12/3/1975", True),
        ("12031975", True),
        ("12 Mar 1975", True),
        ("March 12, 1975", True),
        ("1975-03-12 00:00:00", True),
        ("13/03/1975", False),
        ("12/03/1976", False),
        ("03/1975", False),
        ("12 Apr 1975", False),
    ],
)
def test_p3_birth_date_in_common_written_forms(text: str, hit: bool) -> None:
    ids = ids_of(PatientBirthDate="19750312")
    assert ids.find(text) == (["PatientBirthDate"] if hit else [])
    assert ids.find(ids.redact(text)) == []


@pytest.mark.parametrize(
    ("pid", "text", "hit"),
    [
        ("JC778899", "mrn JC778899x", True),
        ("JC778899", "xJC778899", True),
        ("JC778899", "T1w_JC778899b_2.nii", True),
        ("JC-778899", "JC778899x", True),
        ("JC778899", "JC7788990", False),  # another number
        ("JC778899", "JC77889", False),
        ("778899", "a778899b", True),
        ("778899", "17788990", False),
        ("778899", "v1.0.20778899", False),
        ("7788", "a7788b", False),  # too short to match inside a token
    ],
)
def test_p3_id_inside_a_longer_token(pid: str, text: str, hit: bool) -> None:
    ids = ids_of(PatientID=pid)
    assert ids.find(text) == (["PatientID"] if hit else [])
    redacted = ids.redact(text)
    assert ids.find(redacted) == []
    assert (redacted != text) == hit


def test_p3_forms_are_counted_not_listed_in_the_report() -> None:
    ids = ids_of(PatientName="Conceição^João", PatientBirthDate="19750312", PatientID="JC-778899")
    report = ids.to_json()
    assert [i["field"] for i in report["identifiers"]] == [
        "PatientName",
        "PatientName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
    ]
    assert set(report["other_written_forms"]) == {"PatientName", "PatientBirthDate", "PatientID"}
    text = json.dumps(report).casefold()
    assert "joao" not in text and "778899" not in text and "1975" not in text


def test_except_words_drops_only_single_name_words() -> None:
    """Issue 12 item 5: for bidsapp's own text, a name word that is also one of its words."""
    ids = ids_of(PatientName="Xq7^dcm2niix", PatientID="dcm2niix7", PatientBirthDate="19580611")
    own = ids.except_words(frozenset({"dcm2niix", "report"}))
    assert ids.find("dcm2niix v1.0") == ["PatientName"]
    assert own.find("dcm2niix v1.0") == []
    assert ids.name_words_in(frozenset({"dcm2niix"})) == 1
    for whole in ("Xq7 dcm2niix", "xq7dcm2niix", "dcm2niix7", "1958-06-11", "Xq7"):
        assert own.find(whole) == ids.find(whole) != [], whole
    # a one-word name is the whole name: never dropped
    single = ids_of(PatientName="dcm2niix")
    assert single.except_words(frozenset({"dcm2niix"})).find("dcm2niix") == ["PatientName"]


def test_own_words_come_from_the_package_s_text() -> None:
    from bidsapp.pipeline.vocabulary import own_words, words_of

    assert {"dcm2niix", "heudiconv", "versions", "roboto"} <= own_words()
    assert words_of('"""A docstring."""\nX = "Kept words"\n') == {"kept", "words"}


def test_own_words_among_a_patient_s_name_words_is_exactly_the_intersection() -> None:
    from bidsapp.pipeline.vocabulary import own_words, own_words_among

    # own words; one in the source but only in docstrings (vocabulary.py's); one nowhere
    words = frozenset({"dcm2niix", "roboto", "docstrings", "xqzzyvv"})
    assert "docstrings" not in own_words()
    assert own_words_among(words) == own_words() & words == {"dcm2niix", "roboto"}
    assert own_words_among(frozenset({"xqzzyvv", "docstrings"})) == frozenset()
    assert {"xq7", "dcm2niix"} <= ids_of(PatientName="Xq7^dcm2niix").name_words()
