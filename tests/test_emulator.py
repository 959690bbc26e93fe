"""The Drive v3 emulator, driven over real HTTP by google-api-python-client and google-auth.

Nothing in the client is patched: it is built from the packaged drive v3 discovery document with
rootUrl pointing at the emulator, and authenticates through the emulator's token endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import google_auth_httplib2
import httplib2
import pytest
from bidsapp_sandbox.emulator import Emulator, Fault
from google.auth.exceptions import RefreshError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from googleapiclient.discovery import build_from_document
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload, build_http

SCOPES = ["https://www.googleapis.com/auth/drive"]
FOLDER = "application/vnd.google-apps.folder"
SA = "bot@proj.iam.gserviceaccount.com"
ALICE = "alice@example.org"
BOB = "bob@example.org"
KIB = 1024


def _doc(url: str) -> dict[str, Any]:
    doc = json.loads(get_static_doc("drive", "v3") or "{}")
    doc["rootUrl"] = url + "/"
    return doc


def client(emu: Emulator, creds: Any) -> Any:
    return build_from_document(
        _doc(emu.url), http=google_auth_httplib2.AuthorizedHttp(creds, http=build_http())
    )


def sa_creds(path: Path) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_file(str(path), scopes=SCOPES)


def user_creds(path: Path) -> user_credentials.Credentials:
    # from_authorized_user_file would drop the emulator's token_uri (FACTS.md).
    info = json.loads(path.read_text())
    return user_credentials.Credentials(
        token=None,
        refresh_token=info["refresh_token"],
        token_uri=info["token_uri"],
        client_id=info["client_id"],
        client_secret=info["client_secret"],
        scopes=SCOPES,
    )


def esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def reason(exc: HttpError) -> str:
    return str(json.loads(exc.content)["error"]["errors"][0]["reason"])


@pytest.fixture
def emu() -> Any:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def alice(emu: Emulator, tmp_path: Path) -> Any:
    return client(emu, user_creds(emu.user_token(ALICE, tmp_path / "alice.json")))


@pytest.fixture
def bob(emu: Emulator, tmp_path: Path) -> Any:
    return client(emu, user_creds(emu.user_token(BOB, tmp_path / "bob.json")))


@pytest.fixture
def bot(emu: Emulator, tmp_path: Path) -> Any:
    return client(emu, sa_creds(emu.service_account(SA, tmp_path / "sa.json")))


def names(svc: Any, q: str, **kw: Any) -> list[str]:
    res = svc.files().list(q=q, fields="files(name)", pageSize=1000, **kw).execute()
    return sorted(f["name"] for f in res["files"])


def upload(svc: Any, data: bytes, parent: str, name: str, **kw: Any) -> dict[str, Any]:
    """A resumable upload in 256 KiB chunks, as the store does for large files."""
    media = MediaIoBaseUpload(
        io.BytesIO(data), "application/octet-stream", chunksize=256 * KIB, resumable=True
    )
    req = svc.files().create(
        body={"name": name, "parents": [parent]},
        media_body=media,
        fields="id,name,size,md5Checksum",
        **kw,
    )
    done = None
    while done is None:
        _, done = req.next_chunk()
    return dict(done)


def test_query_grammar_with_escapes_and_or_trashed_mimetype(emu: Emulator, alice: Any) -> None:
    root = emu.my_drive(ALICE)
    for name in ("it's", "back\\slash", "a'b\\c", "plain"):
        emu.file(name, b"x", root, mime="text/plain")
    emu.folder("plain", root)
    gone = emu.file("trashed one", b"", root)
    alice.files().update(fileId=gone, body={"trashed": True}).execute()

    for name in ("it's", "back\\slash", "a'b\\c"):
        assert names(alice, f"name = '{esc(name)}'") == [name]
    assert names(alice, "name = 'plain'") == ["plain", "plain"]
    assert names(alice, "name = 'plain' and mimeType = 'image/png'") == []
    assert names(alice, f"name = 'plain' and mimeType = '{FOLDER}'") == ["plain"]
    assert names(alice, f"name = 'it\\'s' or mimeType = '{FOLDER}'") == ["it's", "plain"]
    assert names(alice, f"'root' in parents and mimeType != '{FOLDER}' and trashed = false") == [
        "a'b\\c",
        "back\\slash",
        "it's",
        "plain",
    ]
    # Drive lists trashed items unless asked not to.
    assert "trashed one" in names(alice, "'root' in parents")
    assert names(alice, "trashed = true") == ["trashed one"]
    assert names(alice, "name contains 'SLASH' and not name = 'plain'") == ["back\\slash"]
    other = emu.folder("other", root)
    emu.file("elsewhere", b"", other)
    either = f"('{other}' in parents or 'root' in parents) and name != 'plain'"
    assert "elsewhere" in names(alice, either) and "it's" in names(alice, either)
    with pytest.raises(HttpError) as err:
        names(alice, "name = 'unterminated")
    assert err.value.resp.status == 400
    with pytest.raises(HttpError) as err:
        names(alice, "name = 'a\\b'")  # \b is no escape Drive knows
    assert err.value.resp.status == 400


def test_paging_and_fields(emu: Emulator, alice: Any) -> None:
    folder = emu.folder("many", owner=ALICE)
    made = {emu.file(f"f{i:02d}", b"%d" % i, folder) for i in range(25)}
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        res = (
            alice.files()
            .list(
                q=f"'{folder}' in parents",
                pageSize=10,
                pageToken=token,
                fields="nextPageToken, files(id)",
            )
            .execute()
        )
        pages += 1
        assert set(res["files"][0]) == {"id"}
        seen += [f["id"] for f in res["files"]]
        token = res.get("nextPageToken")
        if not token:
            break
    assert pages == 3 and len(seen) == 25 and set(seen) == made

    default = alice.files().list(q=f"'{folder}' in parents", pageSize=1).execute()
    assert set(default["files"][0]) == {"kind", "id", "name", "mimeType"}
    one = alice.files().get(fileId=seen[0], fields="*").execute()
    assert {"md5Checksum", "size", "parents", "owners"} <= set(one)
    nested = alice.files().get(fileId=seen[0], fields="owners(emailAddress),size").execute()
    assert nested == {"owners": [{"emailAddress": ALICE}], "size": one["size"]}
    with pytest.raises(HttpError) as err:
        alice.files().get(fileId=seen[0], fields="md5checksum").execute()
    assert err.value.resp.status == 400


def test_get_media_and_range(emu: Emulator, alice: Any) -> None:
    data = os.urandom(700 * KIB)
    fid = emu.file("scan.nii.gz", data, owner=ALICE)
    assert alice.files().get_media(fileId=fid).execute() == data

    buf = io.BytesIO()
    down = MediaIoBaseDownload(buf, alice.files().get_media(fileId=fid), chunksize=256 * KIB)
    done, chunks = False, 0
    while not done:
        _, done = down.next_chunk()
        chunks += 1
    assert buf.getvalue() == data and chunks == 3

    http = alice._http
    url = f"{emu.url}/drive/v3/files/{fid}?alt=media"
    resp, body = http.request(url, headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and body == data[10:20]
    assert resp["content-range"] == f"bytes 10-19/{len(data)}"
    resp, body = http.request(url, headers={"Range": "bytes=-5"})
    assert resp.status == 206 and body == data[-5:]
    resp, _ = http.request(url, headers={"Range": f"bytes={len(data)}-"})
    assert resp.status == 416


def test_create_update_move_delete(emu: Emulator, alice: Any) -> None:
    a = alice.files().create(body={"name": "a", "mimeType": FOLDER}, fields="id").execute()["id"]
    b = alice.files().create(body={"name": "b", "mimeType": FOLDER}, fields="id").execute()["id"]
    f = alice.files().create(body={"name": "f", "parents": [a]}, fields="id").execute()["id"]
    alice.files().update(fileId=f, body={"name": "g", "properties": {"k": "v"}}).execute()
    moved = (
        alice.files()
        .update(fileId=f, addParents=b, removeParents=a, fields="name,parents,properties")
        .execute()
    )
    assert moved == {"name": "g", "parents": [b], "properties": {"k": "v"}}
    with pytest.raises(HttpError) as err:
        alice.files().update(fileId=f, addParents=a).execute()
    assert err.value.resp.status == 403 and reason(err.value) == "cannotAddParent"
    with pytest.raises(HttpError) as err:
        alice.files().update(fileId=f, body={"parents": [a]}).execute()
    assert reason(err.value) == "fieldNotWritable"
    with pytest.raises(HttpError) as err:
        alice.files().update(fileId=a, addParents=a, removeParents=emu.my_drive(ALICE)).execute()
    assert err.value.resp.status == 400
    alice.files().delete(fileId=b).execute()
    for gone in (b, f):
        with pytest.raises(HttpError) as err:
            alice.files().get(fileId=gone).execute()
        assert err.value.resp.status == 404


def test_uploads_media_multipart_resumable(emu: Emulator, alice: Any) -> None:
    root = emu.my_drive(ALICE)
    # Bytes that look like MIME structure: boundaries, CRLFs, a closing delimiter.
    tricky = b"--===============123==\r\n\r\n--abc--\n\x00\xff" * 50 + b"\n--"
    media = MediaIoBaseUpload(io.BytesIO(tricky), "application/octet-stream")
    multi = (
        alice.files()
        .create(body={"name": "multi.bin"}, media_body=media, fields="id,md5Checksum,size")
        .execute()
    )
    assert multi["md5Checksum"] == hashlib.md5(tricky).hexdigest()
    assert int(multi["size"]) == len(tricky) and emu.content(multi["id"]) == tricky

    # Media-only upload (no metadata part) then a content update with uploadType=media.
    simple = (
        alice.files()
        .create(
            media_body=MediaIoBaseUpload(io.BytesIO(b"one"), "text/plain"),
            fields="id,name,mimeType",
        )
        .execute()
    )
    assert simple["name"] == "Untitled" and simple["mimeType"] == "text/plain"
    alice.files().update(
        fileId=simple["id"], media_body=MediaIoBaseUpload(io.BytesIO(b"two"), "text/plain")
    ).execute()
    assert emu.content(simple["id"]) == b"two"

    big = os.urandom(600 * KIB + 7)
    res = upload(alice, big, root, "big.bin")
    assert res["md5Checksum"] == hashlib.md5(big).hexdigest() and emu.content(res["id"]) == big
    assert emu.stats()["by_status"].get(308) == 2  # three chunks: two 308s, then 200

    empty = upload(alice, b"", root, "empty.bin")
    assert empty["size"] == "0" and empty["md5Checksum"] == hashlib.md5(b"").hexdigest()


def test_resumable_recovers_with_status_query(emu: Emulator, alice: Any) -> None:
    data = os.urandom(3 * 256 * KIB + 100)
    emu.set_faults([Fault("reset", on="upload", after=2, count=1)])
    media = MediaIoBaseUpload(
        io.BytesIO(data), "application/octet-stream", chunksize=256 * KIB, resumable=True
    )
    req = alice.files().create(body={"name": "r.bin"}, media_body=media, fields="id,md5Checksum")
    done, resets = None, 0
    while done is None:
        try:
            _, done = req.next_chunk()
        except ConnectionResetError:
            resets += 1  # the chunk was stored; the status query tells the client so
    assert resets == 1 and done["md5Checksum"] == hashlib.md5(data).hexdigest()

    # A raw status query against a fresh session: 308 without Range, then with one.
    http = alice._http
    resp, _ = http.request(
        f"{emu.url}/upload/drive/v3/files?uploadType=resumable",
        "POST",
        body=json.dumps({"name": "q.bin"}),
        headers={"Content-Type": "application/json", "X-Upload-Content-Length": "300000"},
    )
    session = resp["location"]
    raw = build_http()
    resp, _ = raw.request(session, "PUT", headers={"Content-Range": "bytes */300000"})
    assert resp.status == 308 and "range" not in resp
    resp, _ = raw.request(
        session,
        "PUT",
        body=data[: 256 * KIB],
        headers={"Content-Range": f"bytes 0-{256 * KIB - 1}/300000"},
    )
    assert resp.status == 308 and resp["range"] == f"bytes=0-{256 * KIB - 1}"
    resp, _ = raw.request(
        session, "PUT", body=b"x" * 1000, headers={"Content-Range": "bytes 262144-263143/*"}
    )
    assert resp.status == 400  # non-final chunks come in multiples of 256 KiB


def test_shortcuts(emu: Emulator, alice: Any) -> None:
    target = emu.folder("exam", owner=ALICE)
    sc = (
        alice.files()
        .create(
            body={
                "name": "link",
                "mimeType": "application/vnd.google-apps.shortcut",
                "shortcutDetails": {"targetId": target},
            },
            fields="id,shortcutDetails",
        )
        .execute()
    )
    assert sc["shortcutDetails"] == {"targetId": target, "targetMimeType": FOLDER}
    with pytest.raises(HttpError) as err:
        alice.files().get_media(fileId=sc["id"]).execute()
    assert reason(err.value) == "fileNotDownloadable"


def test_shared_drive_flags_and_roles(emu: Emulator, bot: Any, alice: Any, bob: Any) -> None:
    drive = emu.shared_drive("out", {SA: "fileOrganizer", ALICE: "writer", BOB: "organizer"})
    sub = emu.folder("sub", drive)
    doc = emu.file("doc.txt", b"hi", sub)
    q = f"'{sub}' in parents"
    assert names(bot, q) == []  # without includeItemsFromAllDrives
    assert names(bot, q, includeItemsFromAllDrives=True, supportsAllDrives=True) == ["doc.txt"]
    assert names(
        bot,
        "name = 'doc.txt'",
        corpora="drive",
        driveId=drive,
        includeItemsFromAllDrives=True,
        supportsAllDrives=True,
    ) == ["doc.txt"]
    with pytest.raises(HttpError) as err:
        bot.files().get(fileId=doc).execute()
    assert err.value.resp.status == 404
    meta = bot.files().get(fileId=doc, supportsAllDrives=True, fields="driveId").execute()
    assert meta == {"driveId": drive}
    assert [d["id"] for d in bot.drives().list().execute()["drives"]] == [drive]

    other = emu.folder("other", drive)
    with pytest.raises(HttpError) as err:  # a Contributor may not move
        alice.files().update(
            fileId=doc, addParents=other, removeParents=sub, supportsAllDrives=True
        ).execute()
    assert err.value.resp.status == 403
    bot.files().update(
        fileId=doc, addParents=other, removeParents=sub, supportsAllDrives=True
    ).execute()
    with pytest.raises(HttpError) as err:  # a Content manager trashes, only a Manager deletes
        bot.files().delete(fileId=doc, supportsAllDrives=True).execute()
    assert err.value.resp.status == 403
    bot.files().update(fileId=doc, body={"trashed": True}, supportsAllDrives=True).execute()
    bob.files().delete(fileId=doc, supportsAllDrives=True).execute()
    assert emu.listing(other) == []


def test_duplicate_names_and_unshared_items(emu: Emulator, alice: Any, bob: Any) -> None:
    folder = emu.folder("dup", owner=ALICE)
    for _ in range(2):
        alice.files().create(body={"name": "same", "parents": [folder]}).execute()
    assert names(alice, f"'{folder}' in parents") == ["same", "same"]
    assert [c["name"] for c in emu.listing(folder)] == ["same", "same"]

    with pytest.raises(HttpError) as err:
        bob.files().get(fileId=folder).execute()
    assert err.value.resp.status == 404
    assert names(bob, f"'{folder}' in parents") == []
    emu.share(folder, BOB, "reader")
    assert names(bob, f"'{folder}' in parents") == ["same", "same"]
    with pytest.raises(HttpError) as err:
        bob.files().create(body={"name": "x", "parents": [folder]}).execute()
    assert reason(err.value) == "insufficientFilePermissions"


def test_service_account_has_no_storage(emu: Emulator, bot: Any) -> None:
    out = emu.folder("output", owner=ALICE)
    emu.share(out, SA, "writer")
    media = MediaIoBaseUpload(io.BytesIO(b"data"), "text/plain")
    with pytest.raises(HttpError) as err:
        bot.files().create(body={"name": "f", "parents": [out]}, media_body=media).execute()
    assert err.value.resp.status == 403 and reason(err.value) == "storageQuotaExceeded"
    with pytest.raises(HttpError) as err:  # a resumable upload is refused at initiation
        upload(bot, b"x" * 10, out, "big")
    assert reason(err.value) == "storageQuotaExceeded"
    bot.files().create(body={"name": "sub", "mimeType": FOLDER, "parents": [out]}).execute()
    drive = emu.shared_drive("team", {SA: "writer"})
    upload(bot, b"fine", drive, "f", supportsAllDrives=True)
    assert emu.tree(drive) == {"f": b"fine"}
    who = bot.about().get(fields="user(emailAddress)").execute()
    assert who == {"user": {"emailAddress": SA}}


def test_token_endpoint(emu: Emulator, tmp_path: Path) -> None:
    good = emu.service_account(SA, tmp_path / "sa.json")
    forged = json.loads(good.read_text())
    other = json.loads(
        emu.service_account("x@p.iam.gserviceaccount.com", tmp_path / "x.json").read_text()
    )
    forged["private_key"] = other["private_key"]  # right account, wrong key
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(RefreshError, match="invalid_grant"):
        client(emu, sa_creds(tmp_path / "forged.json")).files().list().execute()
    resp, body = build_http().request(
        emu.token_uri,
        "POST",
        body="grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=not.a.jwt",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400 and json.loads(body)["error"] == "invalid_grant"

    user_file = emu.user_token(ALICE, tmp_path / "alice.json")
    creds = user_creds(user_file)
    svc = client(emu, creds)
    assert svc.about().get(fields="user").execute()["user"]["emailAddress"] == ALICE
    wrong = json.loads(user_file.read_text()) | {"client_secret": "nope"}
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    with pytest.raises(RefreshError):
        client(emu, user_creds(tmp_path / "wrong.json")).files().list().execute()

    # google-auth retries a 503 from the token endpoint by itself; "any" leaves /token alone.
    emu.set_faults([Fault("503", on="token", count=1), Fault("500", on="any", count=0)])
    emu.expire_tokens()
    assert svc.files().list().execute()["files"] == []
    assert emu.stats()["faults_injected"] == 1

    emu.revoke(ALICE)
    with pytest.raises(RefreshError, match="invalid_grant"):
        svc.files().list().execute()  # 401, then the refresh is refused


def test_status_faults_reach_the_client(emu: Emulator, alice: Any) -> None:
    fid = emu.file("f", b"content", owner=ALICE)
    expected = {
        "rate403": (403, "rateLimitExceeded"),
        "userRate403": (403, "userRateLimitExceeded"),
        "daily403": (403, "dailyLimitExceeded"),
        "429": (429, "rateLimitExceeded"),
        "500": (500, "backendError"),
        "503": (503, "backendError"),
    }
    for kind, (status, why) in expected.items():
        emu.set_faults([Fault(kind, on="get", count=1)])
        with pytest.raises(HttpError) as err:
            alice.files().get(fileId=fid).execute(num_retries=0)
        assert (err.value.resp.status, reason(err.value)) == (status, why), kind
        assert alice.files().get(fileId=fid).execute()["id"] == fid  # count=1: next one passes


def test_transport_faults_reach_the_client(emu: Emulator, alice: Any) -> None:
    data = os.urandom(64 * KIB)
    fid = emu.file("f", data, owner=ALICE)
    emu.set_faults([Fault("reset", on="media", count=1)])
    with pytest.raises(ConnectionResetError):
        alice.files().get_media(fileId=fid).execute()
    emu.set_faults([Fault("truncate", on="media", count=1)])
    with pytest.raises(http.client.IncompleteRead):
        alice.files().get_media(fileId=fid).execute()
    emu.set_faults([Fault("truncate", on="list", count=1)])
    with pytest.raises(http.client.IncompleteRead):
        alice.files().list().execute()

    emu.set_faults([Fault("latency", on="get", seconds=0.3, count=1)])
    start = time.monotonic()
    alice.files().get(fileId=fid).execute()
    assert time.monotonic() - start >= 0.3

    emu.set_faults([])
    emu.bandwidth = 256 * KIB  # bytes per second
    start = time.monotonic()
    assert alice.files().get_media(fileId=fid).execute() == data
    assert time.monotonic() - start >= 0.2  # 64 KiB at 256 KiB/s
    emu.bandwidth = None

    before = emu.stats()["token_requests"]
    emu.set_faults([Fault("token_expiry", on="list", count=1)])
    alice.files().list().execute()  # 401, google-auth refreshes and retries by itself
    assert emu.stats()["token_requests"] == before + 1
    emu.expire_tokens()
    alice.files().list().execute()
    assert emu.stats()["token_requests"] == before + 2


def test_fault_schedule_is_seeded(emu: Emulator, alice: Any) -> None:
    def pattern(seed: int) -> list[bool]:
        emu.set_faults([Fault("503", on="list", probability=0.5)], seed=seed)
        hits = []
        for _ in range(16):
            try:
                alice.files().list().execute()
                hits.append(False)
            except HttpError:
                hits.append(True)
        return hits

    first = pattern(7)
    assert first == pattern(7) and 0 < sum(first) < 16
    emu.set_faults([Fault("500", on="any", every=3)])
    outcomes = []
    for _ in range(6):
        try:
            alice.files().list().execute()
            outcomes.append("ok")
        except HttpError:
            outcomes.append("fail")
    assert outcomes == ["ok", "ok", "fail"] * 2


def test_quota_per_token_and_max_rps(tmp_path: Path) -> None:
    with Emulator(quota_per_token=(5, 1.0)) as emu:
        svc = client(emu, sa_creds(emu.service_account(SA, tmp_path / "sa.json")))
        for _ in range(5):
            svc.files().list().execute()
        with pytest.raises(HttpError) as err:
            svc.files().list().execute()
        assert err.value.resp.status == 403 and reason(err.value) == "rateLimitExceeded"
        assert emu.stats()["quota_rejections"] == 1 and emu.stats()["max_rps_1s"] >= 6
        time.sleep(1.05)
        svc.files().list().execute()

        emu.reset_stats()
        for _ in range(3):
            svc.files().list().execute()
            time.sleep(0.6)  # no one-second window holds more than two of these
        assert emu.stats()["max_rps_1s"] == 2.0 and emu.stats()["requests"] == 3


def test_concurrent_requests(tmp_path: Path) -> None:
    with Emulator(latency=0.3) as emu:
        sa_file = emu.service_account(SA, tmp_path / "sa.json")
        creds = sa_creds(sa_file)
        svcs = [client(emu, creds) for _ in range(8)]  # one Http per thread
        svcs[0].files().list().execute()  # fetch the token once
        errors: list[BaseException] = []

        def work(svc: Any) -> None:
            try:
                svc.files().list().execute()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(s,)) for s in svcs]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and time.monotonic() - start < 8 * 0.3 / 2
        assert emu.stats()["max_rps_1s"] >= 8


def test_state_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Emulator(state) as emu:
        port = int(emu.url.rsplit(":", 1)[1])
        sa_file = emu.service_account(SA)
        drive = emu.shared_drive("out", {SA: "fileOrganizer"})
        upload(client(emu, sa_creds(sa_file)), b"kept", drive, "f.txt", supportsAllDrives=True)
    assert list((state / "blobs").iterdir())
    with Emulator(state, port=port) as again:
        svc = client(again, sa_creds(sa_file))  # the old key and token_uri still work
        got = (
            svc.files()
            .list(
                q="name = 'f.txt'",
                includeItemsFromAllDrives=True,
                supportsAllDrives=True,
                fields="files(id)",
            )
            .execute()
        )
        fid = got["files"][0]["id"]
        assert svc.files().get_media(fileId=fid, supportsAllDrives=True).execute() == b"kept"


def test_cli_command_serves_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bidsapp.cli",
            "emulator",
            "--state",
            str(tmp_path),
            "--shared-drive",
            "out",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        url = lines[0].split()[3]
        key = Path(lines[2].split()[3])
        assert lines[1].strip() == f"export BIDSAPP_DRIVE_URL={url}" and key.exists()
        svc = build_from_document(
            _doc(url),
            http=google_auth_httplib2.AuthorizedHttp(sa_creds(key), http=build_http()),
        )
        assert svc.drives().list().execute()["drives"][0]["name"] == "out"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_plain_httplib2_needs_308_excluded(emu: Emulator, tmp_path: Path) -> None:
    """Documents why clients use build_http(): httplib2 otherwise treats 308 as a redirect."""
    creds = sa_creds(emu.service_account(SA, tmp_path / "sa.json"))
    drive = emu.shared_drive("d", {SA: "writer"})
    svc = build_from_document(
        _doc(emu.url), http=google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http())
    )
    with pytest.raises(httplib2.RedirectMissingLocation):
        upload(svc, b"x" * (300 * KIB), drive, "f", supportsAllDrives=True)


def test_consent_authorization_code_and_read_only_scope(emu: Emulator, tmp_path: Path) -> None:
    info = json.loads(emu.oauth_client(ALICE, tmp_path / "client.json").read_text())["installed"]
    verifier = "v" * 50
    digest = hashlib.sha256(verifier.encode()).digest()
    challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    web = build_http()
    web.follow_redirects = False
    back = "http://localhost:9/"
    readonly = SCOPES[0] + ".readonly"

    def consent(redirect: str = back) -> httplib2.Response:
        query = {
            "client_id": info["client_id"],
            "redirect_uri": redirect,
            "response_type": "code",
            "scope": readonly,
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        resp, _ = web.request(f"{info['auth_uri']}?{urlencode(query)}")
        return resp

    def exchange(code: str, code_verifier: str) -> tuple[int, dict[str, Any]]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": back,
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
            "code_verifier": code_verifier,
        }
        resp, body = web.request(
            info["token_uri"],
            "POST",
            body=urlencode(form),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        return resp.status, json.loads(body)

    assert consent("https://elsewhere.example/").status == 400
    first = dict(parse_qsl(urlsplit(consent()["location"]).query))
    assert first["state"] == "s1"
    assert exchange(first["code"], "w" * 50)[0] == 400, "PKCE verifier checked"
    second = dict(parse_qsl(urlsplit(consent()["location"]).query))
    status, granted = exchange(second["code"], verifier)
    assert status == 200 and granted["scope"] == readonly and granted["refresh_token"]
    assert exchange(second["code"], verifier)[0] == 400, "a code is used once"
    creds = user_credentials.Credentials(token=granted["access_token"])
    svc = client(emu, creds)
    assert svc.files().list().execute()["files"] == []
    with pytest.raises(HttpError) as info_:
        svc.files().create(body={"name": "x", "mimeType": FOLDER}).execute()
    assert info_.value.resp.status == 403 and reason(info_.value) == "insufficientPermissions"
