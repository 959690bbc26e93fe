"""Drive staging and upload figures against the emulator (not run by CI).

    python benchmarks/drive.py [--files 2000] [--size 65536] [--latency 0.2] [--drive-rps 50]

Staging: bidsapp's parallel download (one Http per worker thread, paced, md5-verified) of one
subject's folder versus a sequential google-api-python-client loop, with the emulator answering
every request after `--latency` seconds. Target: bidsapp at least 8x the loop with --drive-rps 50,
and no one-second window with more requests than the budget plus its burst. Uploads: bidsapp's
publish path (upload_many into a fresh .bidsapp/incoming/<run>/ folder: parallel, paced,
md5-verified, no lookups in folders it made) versus a plain sequential create loop; no target
(the issue's), but at least as fast as the loop and never above the budget plus its burst.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

from bidsapp_sandbox.emulator import Emulator
from googleapiclient.discovery import build_from_document
from googleapiclient.http import MediaIoBaseUpload

from bidsapp.pipeline.publish import init_shared
from bidsapp.stores.drive import open_drive
from bidsapp.stores.drive_api import _discovery
from bidsapp.stores.pacer import TokenBucket

SA = "bench@proj.iam.gserviceaccount.com"
LAB = "lab@example.org"


def sequential_service(key: Path, url: str):  # type: ignore[no-untyped-def]
    import google_auth_httplib2
    import httplib2
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(
        str(key), scopes=["https://www.googleapis.com/auth/drive"]
    )
    raw = httplib2.Http(timeout=60)
    raw.redirect_codes = raw.redirect_codes - {308}
    return build_from_document(
        _discovery(url), http=google_auth_httplib2.AuthorizedHttp(creds, http=raw)
    )


def row(name: str, files: int, nbytes: int, seconds: float) -> tuple[str, float, float]:
    fps, mbps = files / seconds, nbytes / 1e6 / seconds
    print(f"| {name:<42} | {files:>5} | {seconds:>7.1f} | {fps:>7.1f} | {mbps:>6.2f} |")
    return name, fps, mbps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--drive-rps", type=float, default=50.0)
    parser.add_argument("--sequential-files", type=int, default=200, help="loop sample size")
    parser.add_argument("--upload-files", type=int, default=100)
    args = parser.parse_args()
    os.environ["BIDSAPP_LOG_LEVEL"] = "WARNING"
    from bidsapp import logs

    logs.setup_console("WARNING")

    tmp = Path(tempfile.mkdtemp(prefix="bench-drive-"))
    with Emulator() as emu:
        key = emu.service_account(email=SA, dest=tmp / "sa.json")
        os.environ["BIDSAPP_DRIVE_URL"] = emu.url
        os.environ["BIDSAPP_CREDENTIALS"] = str(key)
        os.environ["BIDSAPP_DRIVE_RPS"] = str(args.drive_rps)
        source = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
        exam = emu.folder("exam", parent=source, owner=LAB)
        for n in range(args.files):
            emu.file(f"{n:05d}.dcm", os.urandom(args.size), parent=exam, owner=LAB)
        emu.share(source, SA, role="reader")
        drive = emu.shared_drive("bench", members={SA: "fileOrganizer"})
        emu.latency = args.latency
        burst = TokenBucket(args.drive_rps).burst
        print(
            f"emulator latency {args.latency * 1000:.0f} ms/request, {args.files} files x "
            f"{args.size // 1024} KiB, --drive-rps {args.drive_rps:g} (burst {burst:g})\n"
        )
        print("| staging                                    | files |       s | files/s |   MB/s |")
        print("|---|---|---|---|---|")

        # bidsapp: walk + parallel download, as stage() does.
        store = open_drive(f"gdrive://{source}", for_output=False, settings=None)
        dest = tmp / "bidsapp"
        dest.mkdir()
        emu.reset_stats()
        t0 = time.monotonic()
        items = [
            (f"exam/{rel}", dest / f"{n:07d}") for n, (rel, _) in enumerate(store.walk("exam"))
        ]
        store.download_many(items)
        ours = row(
            "bidsapp (16 threads, paced)", len(items), len(items) * args.size, time.monotonic() - t0
        )
        peak = emu.stats()["max_rps_1s"]

        # A plain sequential loop with the same client library.
        service = sequential_service(key, emu.url)
        t0 = time.monotonic()
        listed, token = [], None
        while True:
            page = (
                service.files()
                .list(
                    q=f"'{exam}' in parents and trashed = false",
                    fields="nextPageToken,files(id,name)",
                    pageSize=1000,
                    pageToken=token,
                    supportsAllDrives=True,
                    includeItemsFromAllDrives=True,
                )
                .execute()
            )
            listed += page["files"]
            token = page.get("nextPageToken")
            if not token:
                break
        sample = listed[: args.sequential_files]
        for meta in sample:
            data = service.files().get_media(fileId=meta["id"], supportsAllDrives=True).execute()
            (tmp / "seq").write_bytes(data)
        seq = row(
            f"sequential client loop ({len(sample)} of {len(listed)})",
            len(sample),
            len(sample) * args.size,
            time.monotonic() - t0,
        )
        ratio = ours[1] / seq[1]
        limit = args.drive_rps + burst
        print(
            f"\nratio bidsapp / loop: {ratio:.1f}x files/s (target >= 8x)\n"
            f"busiest one-second window: {peak:.0f} requests (budget {args.drive_rps:g} + burst "
            f"{burst:g} = {limit:g}) -> {'OK' if peak <= limit else 'OVER'}\n"
        )

        # Uploads: bidsapp's publish path versus a plain create loop.
        print("| uploads                                    | files |       s | files/s |   MB/s |")
        print("|---|---|---|---|---|")
        up = tmp / "up"
        up.mkdir()
        for n in range(args.upload_files):
            (up / f"{n:05d}.bin").write_bytes(os.urandom(args.size))
        output = open_drive(f"gdrive://{drive}/bids", for_output=True, settings=None)
        init_shared(output)  # as `group --init` does before jobs fan out
        incoming = ".bidsapp/incoming/01-bench/data/sub-01/anat"
        emu.reset_stats()
        t0 = time.monotonic()
        output.upload_many([(p, f"{incoming}/{p.name}") for p in sorted(up.iterdir())])
        up_ours = row(
            "bidsapp publish path (16 threads, paced)",
            args.upload_files,
            args.upload_files * args.size,
            time.monotonic() - t0,
        )
        up_stats = emu.stats()
        up_peak = up_stats["max_rps_1s"]
        folder = (
            service.files()
            .create(
                body={
                    "name": "plain",
                    "parents": [drive],
                    "mimeType": "application/vnd.google-apps.folder",
                },
                supportsAllDrives=True,
            )
            .execute()["id"]
        )
        t0 = time.monotonic()
        for path in sorted(up.iterdir()):
            media = MediaIoBaseUpload(io.BytesIO(path.read_bytes()), "application/octet-stream")
            service.files().create(
                body={"name": path.name, "parents": [folder]},
                media_body=media,
                supportsAllDrives=True,
            ).execute()
        up_seq = row(
            "sequential client loop",
            args.upload_files,
            args.upload_files * args.size,
            time.monotonic() - t0,
        )
        up_ratio = up_ours[1] / up_seq[1]
        print(
            f"\nratio bidsapp / loop: {up_ratio:.2f}x files/s (no target; >= 1 expected)\n"
            f"bidsapp's requests: {up_stats['requests']} for {args.upload_files} files "
            f"({dict(sorted(up_stats['by_kind'].items()))})\n"
            f"busiest one-second window during bidsapp's uploads: {up_peak:.0f} requests "
            f"(limit {limit:g}) -> {'OK' if up_peak <= limit else 'OVER'}"
        )
    return 0 if ratio >= 8 and peak <= limit and up_ratio >= 1 and up_peak <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
