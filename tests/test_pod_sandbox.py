"""A trial run as the trial pod runs it: read-only root filesystem, uid/gid 10001, HOME=/tmp,
writable only /tmp and the /output and /cache volumes, no network, `--report_to wandb` (offline).

bubblewrap builds that file system (run as root, so the mounts can read every source), and setpriv
drops to uid/gid 10001 inside, a real unprivileged user. Skipped where either is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from trainer.run.report import METRIC_NAMES, parse_line

ROOT = Path(__file__).resolve().parents[1]
UID = GID = 10001


def sandbox_command(output: Path, cache: Path, argv: list[str]) -> list[str]:
    # The virtual environment, the Python it was made from, the code; /usr and /etc are bound whole.
    readable = sorted(p for p in {Path(sys.prefix), Path(sys.base_prefix), ROOT} if p.parts[1] not in ("usr", "etc"))
    command = ["bwrap", "--unshare-net", "--unshare-ipc", "--unshare-pid", "--die-with-parent",
               "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{name}").is_symlink():
            command += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
        elif Path(f"/{name}").is_dir():
            command += ["--ro-bind", f"/{name}", f"/{name}"]
    # /tmp first: a checkout under /tmp is then bound into it rather than hidden by it.
    command += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    made = {Path("/tmp")}
    for path in readable:
        for parent in reversed(path.parents[:-1]):  # bwrap would make them 0700: the user could not pass
            if parent not in made:
                command += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        command += ["--ro-bind", str(path), str(path)]
    command += ["--dir", "/output", "--bind", str(output), "/output", "--dir", "/cache", "--bind", str(cache), "/cache",
                "--remount-ro", "/", "--clearenv", "--setenv", "HOME", "/tmp",
                "--setenv", "PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin", "--setenv", "PYTHONPATH", str(ROOT),
                "--setenv", "TRAINER_CACHE_DIR", "/cache", "--chdir", "/tmp", "--",
                "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", *argv]
    return command


@pytest.fixture
def volumes():
    if shutil.which("bwrap") is None or shutil.which("setpriv") is None:
        pytest.skip("needs bubblewrap (apt-get install bubblewrap) and setpriv")
    if os.geteuid() != 0:
        pytest.skip("needs root to mount the sandbox and then drop to uid 10001")
    base = Path(tempfile.mkdtemp(prefix="pod-"))  # not under pytest's 0700 tmp folder: the uid must pass
    base.chmod(0o755)
    output, cache = base / "output", base / "cache"
    for volume in (output, cache):
        volume.mkdir()
        os.chown(volume, UID, GID)  # the pod's fsGroup owns its volumes
    probe = subprocess.run(sandbox_command(output, cache, ["sh", "-c", "id -u; touch /output/x; touch /etc/x"]),
                           capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() != str(UID):
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot build the sandbox here: {probe.stderr.strip()[:300]}")
    assert "Read-only file system" in probe.stderr and (output / "x").exists()
    (output / "x").unlink()
    yield output, cache
    shutil.rmtree(base, ignore_errors=True)


def test_a_trial_runs_as_the_pod_runs_it(volumes):
    output, cache = volumes
    argv = [sys.executable, "-m", "trainer.cli", "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
            "--eval_file=builtin:sample", "--max_train_samples=32", "--max_eval_samples=8", "--num_train_epochs=1",
            "--per_device_train_batch_size=16", "--output_dir=/output/kobart-tpe-abc123", "--report_to=wandb"]
    result = subprocess.run(sandbox_command(output, cache, argv), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [parse_line(line, set(METRIC_NAMES)) for line in result.stdout.splitlines()]
    assert [dict(found).keys() for timestamp, found in lines if found] == [set(METRIC_NAMES)]
    trial = output / "kobart-tpe-abc123"
    for name in ("metrics.json", "metrics.jsonl", "predictions.csv", "best_model/model.safetensors"):
        assert (trial / name).stat().st_uid == UID, name
    assert list((trial / "wandb").glob("offline-run-*")), "wandb logged offline into the output volume"
    assert (cache / "tokenized").is_dir() and (cache / "builtin").is_dir()


def test_an_output_dir_on_the_read_only_root_is_refused_first(volumes):
    output, cache = volumes
    argv = [sys.executable, "-m", "trainer.cli", "--model_name_or_path=builtin:tiny", "--train_file=builtin:sample",
            "--eval_file=builtin:sample", "--output_dir=/models/run"]
    result = subprocess.run(sandbox_command(output, cache, argv), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == "trainer: error: --output_dir='/models/run': '/' is not writable"
    assert not any(cache.iterdir())
