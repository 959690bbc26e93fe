"""Unit tests for the subject map: reading, writing, extending and selecting."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsapp.errors import NoSubjectSelected, UsageError
from bidsapp.pipeline.subjects import (
    Subject,
    clean_label,
    extend_map,
    from_folder_names,
    read_map,
    select,
    write_map,
)
from bidsapp.stores.local import LocalStore

HEADER = "source\tparticipant\tsession\n"


def _source(tmp_path: Path, folders: list[str], files: tuple[str, ...] = ()) -> LocalStore:
    root = tmp_path / "source"
    root.mkdir()
    for name in folders:
        (root / name).mkdir()
    for name in files:
        (root / name).write_text("not an exam\n")
    return LocalStore(root)


def _map(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "map.tsv"
    path.write_bytes(text.encode(encoding))
    return path


# ---------------------------------------------------------------------------------------------
# reading and writing


def test_round_trip(tmp_path: Path) -> None:
    subjects = [
        Subject("Maria Souza", "01"),
        Subject("José Müller/exam 2", "02", "2"),
        Subject("id:1AbC-dEf_123", "02", "1"),
        Subject("ctrl", "ctrl7"),
    ]
    path = tmp_path / "map.tsv"
    write_map(path, subjects)

    assert path.read_text(encoding="utf-8").splitlines()[0] == "source\tparticipant\tsession"
    assert read_map(path) == subjects


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "a\tsub-01\t\n",
        HEADER + "a\t01\n",
        HEADER + "a\tsub-01\tses-\n".replace("ses-", ""),
        "\ufeff" + HEADER + "a\tsub-01\t\n",  # spreadsheet export with a BOM
        HEADER.replace("\n", "\r\n") + "a\t01\t\r\n\r\n",  # CRLF and a blank line
        " source \t participant\tsession\n a \t 01 \t\n",
    ],
)
def test_accepted_spellings(tmp_path: Path, text: str) -> None:
    assert read_map(_map(tmp_path, text)) == [Subject("a", "01")]


def test_session_prefix_is_optional(tmp_path: Path) -> None:
    text = HEADER + "a\tsub-01\tses-1\nb\t01\t2\n"
    assert read_map(_map(tmp_path, text)) == [Subject("a", "01", "1"), Subject("b", "01", "2")]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Maria Souza\t01\t\n", "header"),  # no header line
        ("", "header"),
        ("participant\tsource\tsession\nMaria Souza\t01\t\n", "header"),
        ("source,participant,session\nMaria Souza,01,\n", "header"),
        (HEADER + "Maria Souza\t01\t\nJoao Silva\t01\t\n", "twice"),
        (HEADER + "Maria Souza\tsub-01\t\nJoao Silva\t01\t\n", "twice"),
        (HEADER + "Maria Souza\t01\t1\nJoao Silva\t01\tses-1\n", "twice"),
        (HEADER + "Maria Souza\n", "expected"),
        (HEADER + "Maria Souza\ta_b\t\n", "invalid participant label"),
        (HEADER + "Maria Souza\t01\tx.y\n", "invalid session label"),
    ],
)
def test_bad_maps_are_usage_errors(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as caught:
        read_map(_map(tmp_path, text))
    assert caught.value.exit_code == 64
    # the map is PHI: its source column never reaches a message
    assert "Maria" not in str(caught.value) and "Joao" not in caught.value.one_line()


def test_missing_map_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        read_map(tmp_path / "nope.tsv")
    assert caught.value.exit_code == 64


def test_same_label_in_different_sessions_is_allowed(tmp_path: Path) -> None:
    text = HEADER + "a\t01\t1\nb\t01\t2\nc\t02\t\n"
    assert [s.session for s in read_map(_map(tmp_path, text))] == ["1", "2", ""]


def test_d3_map_refuses_a_label_with_and_without_a_session(tmp_path: Path) -> None:
    text = HEADER + "Maria Souza\t01\t\nJoao Silva\t01\t1\nAna Lima\t02\t\n"
    with pytest.raises(UsageError, match=r"sub-01 .*line 2.*line 3") as caught:
        read_map(_map(tmp_path, text))
    assert caught.value.exit_code == 64
    assert "Maria" not in caught.value.one_line() and "Joao" not in caught.value.one_line()


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("", "source cell is empty"),
        ("   ", "source cell is empty"),
        ("../Maria Souza", "inside SOURCE"),
        ("exams/../../Maria Souza", "inside SOURCE"),
        ("/home/Maria Souza", "inside SOURCE"),
    ],
)
def test_w1_t2_map_source_must_name_a_folder_inside_source(
    tmp_path: Path, source: str, match: str
) -> None:
    """An empty cell would stage the whole SOURCE (every patient); `..` would leave it."""
    with pytest.raises(UsageError, match=match) as caught:
        read_map(_map(tmp_path, HEADER + f"{source}\t01\t\n"))
    assert caught.value.exit_code == 64
    assert "Maria" not in caught.value.one_line()


def test_w1_one_person_column_round_trips(tmp_path: Path) -> None:
    text = "source\tparticipant\tsession\tone_person\nMaria Souza\t01\t\tyes\nAna Lima\t02\t\t\n"
    subjects = read_map(_map(tmp_path, text))
    assert [s.one_person for s in subjects] == [True, False]
    write_map(tmp_path / "again.tsv", subjects)
    assert read_map(tmp_path / "again.tsv") == subjects
    write_map(tmp_path / "plain.tsv", [Subject("Ana Lima", "02")])
    assert (tmp_path / "plain.tsv").read_text().splitlines()[0] == HEADER.strip()


def test_d1_map_is_written_0600_and_never_truncated(tmp_path: Path) -> None:
    path = _map(tmp_path, HEADER + "Maria Souza\t01\t\n")
    path.chmod(0o644)
    write_map(path, [Subject("Maria Souza", "01"), Subject("Ana Lima", "02")])
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()

    # a folder name that is not UTF-8 reaches Python as surrogates: the write fails whole
    with pytest.raises(UnicodeEncodeError):
        write_map(path, [*read_map(path), Subject("Jo\udce3o", "03")])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["map.tsv"]  # no temporary file left


# ---------------------------------------------------------------------------------------------
# labels


@pytest.mark.parametrize(
    ("text", "label"), [("01", "01"), ("sub-01", "01"), ("sub-ab12", "ab12"), ("A7", "A7")]
)
def test_clean_label_accepts(text: str, label: str) -> None:
    assert clean_label(text) == label


@pytest.mark.parametrize(
    "text", ["a_b", "../x", "", "sub-", "sub-01/..", "01 ", "sub-sub-01", "ses-1", "é1", "0\n"]
)
def test_clean_label_rejects(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        clean_label(text)
    assert caught.value.exit_code == 64


@pytest.mark.parametrize(("text", "label"), [("1", "1"), ("ses-pre", "pre")])
def test_clean_session_label(text: str, label: str) -> None:
    assert clean_label(text, "session label") == label
    with pytest.raises(UsageError):
        clean_label("ses-", "session label")


# ---------------------------------------------------------------------------------------------
# extending a map from SOURCE


@pytest.mark.parametrize(
    ("existing", "folders", "added"),
    [
        # existing rows (source, label), folders in SOURCE, expected new rows
        ([], ["b", "a", "C"], [("C", "01"), ("a", "02"), ("b", "03")]),
        ([("x", "01"), ("y", "02")], ["x", "y", "z", "w"], [("w", "03"), ("z", "04")]),
        ([("x", "001")], ["x", "q", "p"], [("p", "002"), ("q", "003")]),
        ([("x", "1"), ("y", "2")], ["new"], [("new", "3")]),
        ([("x", "09")], ["new"], [("new", "10")]),
        ([("x", "05"), ("y", "ctrl")], ["x", "y", "n"], [("n", "06")]),
        # a row whose folder is gone is kept; folders already mapped add nothing
        ([("gone", "01"), ("x", "02")], ["x"], []),
    ],
)
def test_extend_map(
    tmp_path: Path,
    existing: list[tuple[str, str]],
    folders: list[str],
    added: list[tuple[str, str]],
) -> None:
    store = _source(tmp_path, [*folders, ".hidden", ".git"], files=("notes.txt", "README"))
    rows = [Subject(source, label) for source, label in existing]

    extended, count = extend_map(list(rows), store)

    assert extended[: len(rows)] == rows  # never renumbered, never reordered
    assert [(s.source, s.label, s.session) for s in extended[len(rows) :]] == [
        (source, label, "") for source, label in added
    ]
    assert count == len(added)
    labels = [s.label for s in extended]
    assert len(labels) == len(set(labels))


def test_extend_map_keeps_sessions_and_is_stable(tmp_path: Path) -> None:
    store = _source(tmp_path, ["Maria Souza", "Joao Silva", "Ana Lima"])
    path = tmp_path / "map.tsv"
    write_map(path, [Subject("Maria Souza", "07", "1"), Subject("Joao Silva", "07", "2")])

    extended, count = extend_map(read_map(path), store)
    write_map(path, extended)

    assert count == 1
    assert read_map(path) == [
        Subject("Maria Souza", "07", "1"),
        Subject("Joao Silva", "07", "2"),
        Subject("Ana Lima", "08"),
    ]
    again, count = extend_map(read_map(path), store)
    assert count == 0 and again == read_map(path)


# ---------------------------------------------------------------------------------------------
# without a map


def test_from_folder_names(tmp_path: Path) -> None:
    store = _source(
        tmp_path,
        ["01", "sub-02", "Maria Souza", ".hidden", "sub-", "a_b", "sub-03 ", "ABC9"],
        files=("04", "sub-05"),
    )
    assert from_folder_names(store) == [
        Subject("01", "01"),
        Subject("ABC9", "ABC9"),
        Subject("sub-02", "02"),
    ]


def test_from_folder_names_rejects_a_trailing_newline(tmp_path: Path) -> None:
    # folder names are untrusted: '$' in a regex also matches before a final newline
    store = _source(tmp_path, ["01", "06\n", "sub-07\n"])
    assert from_folder_names(store) == [Subject("01", "01")]


# ---------------------------------------------------------------------------------------------
# selecting

MAP = [
    Subject("Maria Souza", "01"),
    Subject("Joao Silva/visit 1", "02", "1"),
    Subject("Ana Lima", "03"),
    Subject("Joao Silva/visit 2", "02", "2"),
]


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ((), MAP),
        (("02",), [MAP[1], MAP[3]]),
        (("03", "01"), [MAP[0], MAP[2]]),
        (("02", "02"), [MAP[1], MAP[3]]),
    ],
)
def test_select(labels: tuple[str, ...], expected: list[Subject]) -> None:
    assert select(MAP, labels, "SOURCE") == expected


@pytest.mark.parametrize("labels", [("99",), ("01", "42", "7")])
def test_select_unknown_label(labels: tuple[str, ...]) -> None:
    with pytest.raises(NoSubjectSelected) as caught:
        select(MAP, labels, "SOURCE")
    assert caught.value.exit_code == 18
    text = caught.value.one_line()
    for label in labels:
        if label not in {s.label for s in MAP}:
            assert f"sub-{label}" in text
    for subject in MAP:
        assert subject.source not in text
        assert subject.source.split("/")[0] not in text


def test_select_with_nothing_to_select() -> None:
    with pytest.raises(NoSubjectSelected) as caught:
        select([], (), "SOURCE")
    assert caught.value.exit_code == 18
