"""The README's quickstart, run as written: `make run`, then every other command of it in a second shell.

The commands come from the README itself (the bash blocks between the quickstart markers), so the page cannot drift
from what works. Two things differ from a newcomer's machine, and only these: `make run` is the launcher it runs
(`python -m launcher`, the virtualenv already exists), on free ports instead of 8080 (the commands' `127.0.0.1:8080`
is rewritten to the gateway's address, and COMFYMESH_URL says the same to the CLI); and the shell starts in a scratch
directory that links the checkout's `examples/` and `.venv/`, so `.comfymesh/` (the admin key, the state) is this
test's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from service_runtime.processes import ManagedProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
README_GATEWAY = "127.0.0.1:8080"
SECTION = re.compile(r"<!-- quickstart:begin.*?-->(.*?)<!-- quickstart:end -->", re.DOTALL)
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def quickstart_blocks() -> list[str]:
    section = SECTION.search((ROOT / "README.md").read_text())
    assert section is not None, "README.md lost its quickstart markers"
    return BASH_BLOCK.findall(section.group(1))


def test_the_quickstart_section_starts_with_make_run() -> None:
    blocks = quickstart_blocks()
    assert blocks[0].strip() == "make run"
    assert len(blocks) >= 4 and all("make run" not in block for block in blocks[1:])


def test_readme_quickstart_end_to_end(tmp_path: Path) -> None:
    workdir = tmp_path / "newcomer"
    workdir.mkdir()
    for name in ("examples", ".venv"):
        (workdir / name).symlink_to(ROOT / name)
    gateway = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYMESH_")}
    env.update({"COMFYMESH_GATEWAY_PORT": gateway.rsplit(":", 1)[1], "COMFYMESH_GATEWAY_ADMIN_PORT": str(free_port()),
                "COMFYMESH_CONTROL_PLANE_PORT": str(free_port()), "COMFYMESH_EXECUTOR_PORT": str(free_port()),
                "COMFYMESH_METRICS_PORT": "0"})
    launcher = ManagedProcess([sys.executable, "-m", "launcher"], log_path=tmp_path / "make-run.log", env=env,
                              cwd=workdir, name="make-run").start()
    try:
        launcher.wait_ready(lambda: "Press Ctrl-C" in launcher.log_tail(), 180)
        assert (workdir / ".comfymesh" / "admin.key").is_file()  # where the README says the key is

        blocks = quickstart_blocks()[1:]
        script = "\n".join(f"echo '=== quickstart block {i}' >&2\n{block}" for i, block in enumerate(blocks))
        shell_env = {**env, "COMFYMESH_URL": gateway}
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace(README_GATEWAY, gateway)],
                                cwd=workdir, env=shell_env, capture_output=True, text=True, timeout=900, check=False)
        transcript = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        assert result.returncode == 0, transcript

        # `comfymesh run` printed the saved paths; the images are there, at the example's sizes.
        printed = [Path(line.strip()) for line in result.stdout.splitlines() if line.strip().endswith(".png")]
        saved = [workdir / p if not p.is_absolute() else p for p in printed]
        sizes = {Image.open(p).size for p in saved if p.is_file()}
        assert (128, 96) in sizes and (64, 64) in sizes, transcript
        # It showed live progress (per node, and the sampler's steps) on stderr.
        assert re.search(r"node 3 \(KSampler\).*step 4/4", result.stderr), transcript
        assert "node 5 (SaveImage) started" in result.stderr and "succeeded" in result.stderr, transcript
        # grpcurl's and curl's watches both ended with the terminal event; the REST script downloaded the image.
        assert result.stdout.count('"succeeded"') >= 2, transcript
        assert '"EXECUTION_STATE_SUCCEEDED"' in result.stdout, transcript
        assert any(p.suffix == ".png" for p in (workdir / "outputs").rglob("*")), transcript
    finally:
        launcher.stop(grace=10)
