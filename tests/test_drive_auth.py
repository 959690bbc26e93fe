"""`bidsapp auth login` against the emulator's consent and token endpoints, then a job with it.

The OAuth client file is the user's own (Desktop app) with auth_uri and token_uri pointing at the
emulator, whose consent screen signs a test identity in at once. The real installed-app flow of
google-auth-oauthlib runs, PKCE included; no browser is needed.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from bidsapp_sandbox.emulator import Emulator

LAB = "lab@example.org"
FOLLOW = """
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=30).read()  # the consent redirects to localhost
"""
BROWSER = """
import subprocess, sys
subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]])  # open, and return at once
"""


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(emu: Emulator, token: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS",)}
    env.pop("BIDSAPP_CREDENTIALS", None)
    return {**env, "BIDSAPP_DRIVE_URL": emu.url, "BIDSAPP_DRIVE_TOKEN": str(token), **extra}


def bidsapp(*args: str | Path | int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bidsapp.cli", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def consent(url: str) -> str:
    """What a browser does with the consent URL: the address it is redirected to."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("GET", f"{parts.path}?{parts.query}")
    reply = conn.getresponse()
    assert reply.status == 302, reply.read()
    return str(reply.getheader("Location"))


def check_token_file(emu: Emulator, token: Path, console: str) -> None:
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    saved = json.loads(token.read_text())
    assert saved["type"] == "authorized_user" and saved["token_uri"] == emu.token_uri
    assert "access_token" not in saved and "ya29." not in token.read_text()
    for secret in ("ya29.", saved["refresh_token"], saved["client_secret"]):
        assert secret not in console, "a token or secret was printed"


def test_login_without_a_browser_then_a_job_runs_with_the_token(
    emu: Emulator, tmp_path: Path
) -> None:
    exams = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)  # shared with no one
    for name in ("01", "02"):
        emu.folder(name, parent=exams, owner=LAB)
    client = emu.oauth_client(LAB, tmp_path / "client.json")
    token = tmp_path / "config" / "token.json"
    port = free_port()
    env = cli_env(emu, token)
    login = bidsapp(
        "auth", "login", "--client-secrets", client, "--no-browser", "--port", port, env=env
    )
    assert login.stdout is not None
    printed = []
    for line in login.stdout:
        printed.append(line)
        if "/o/oauth2/auth?" in line:
            break
    url = printed[-1].strip()
    assert url.startswith(f"{emu.url}/o/oauth2/auth?") and "code_challenge=" in url
    landed = consent(url)
    assert landed.startswith(f"http://localhost:{port}/?") and "code=" in landed
    out, err = login.communicate(landed + "\n", timeout=60)  # pasted back
    console = "".join(printed) + out + err
    assert login.returncode == 0, console
    check_token_file(emu, token, console)

    subject_map = tmp_path / "map.tsv"
    job = bidsapp("subjects", f"gdrive://{exams}", "--subject-map", subject_map, env=env)
    out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err
    assert subject_map.read_text().splitlines()[1:] == ["01\t01\t", "02\t02\t"]
    assert "ya29." not in out + err


def test_login_with_the_local_redirect(emu: Emulator, tmp_path: Path) -> None:
    client = emu.oauth_client(LAB, tmp_path / "client.json")
    token = tmp_path / "token.json"
    browser = tmp_path / "browser.py"
    browser.write_text(BROWSER)
    # webbrowser runs $BROWSER with the URL; the "browser" follows the consent redirect to the
    # listener bidsapp opened on the port, as a real one would.
    env = cli_env(emu, token, BROWSER=f"{sys.executable} {browser} '{FOLLOW}' %s")
    login = bidsapp("auth", "login", "--client-secrets", client, "--port", free_port(), env=env)
    out, err = login.communicate(timeout=60)
    assert login.returncode == 0, out + err
    check_token_file(emu, token, out + err)
    who = bidsapp("auth", "whoami", env=env)
    out, err = who.communicate(timeout=60)
    assert who.returncode == 0 and LAB in out, out + err


def test_login_refuses_a_plain_http_token_endpoint_off_this_machine(tmp_path: Path) -> None:
    # An emulator (or anything) at a non-loopback http address must not switch off oauthlib's
    # https check: the refresh token would cross the network unencrypted.
    remote = "http://192.0.2.10:8080"  # TEST-NET-1: never routed
    client = tmp_path / "client.json"
    client.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "x.apps.googleusercontent.com",
                    "client_secret": "not-a-secret",
                    "auth_uri": f"{remote}/o/oauth2/auth",
                    "token_uri": f"{remote}/token",
                    "redirect_uris": ["http://localhost"],
                }
            }
        )
    )
    env = {**os.environ, "BIDSAPP_DRIVE_URL": remote, "BIDSAPP_DRIVE_TOKEN": str(tmp_path / "t")}
    login = bidsapp("auth", "login", "--client-secrets", client, "--no-browser", env=env)
    out, err = login.communicate("", timeout=60)
    assert login.returncode == 64, out + err
    assert "is not https" in err and "Traceback" not in err
    assert "/o/oauth2/auth?" not in out  # refused before any consent URL is shown
    assert not (tmp_path / "t").exists()
