"""Regenerate the README's sample outputs by running the tool, so they cannot drift.

Each sample in README.md sits between `<!-- sample: NAME -->` and
`<!-- /sample -->`; its body is a fenced block of `$ command` lines, each
followed by what the command printed (stdout and stderr, as a terminal shows
them). This script builds the example model (examples/make_example_model.py)
in a temporary folder, runs every command there (`gpucompress` is this
checkout's), and rewrites the blocks; `--check` compares instead and exits 1
when a block differs. Timings (`time ... s (...)`) and the example model's
own zip size vary from run to run and are compared masked.

    python docs/make_samples.py            # rewrite README.md (and docs/inspect_clustered_k16.png)
    python docs/make_samples.py --check    # exit 1 when a sample no longer matches the tool
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- sample: (?P<name>[\w-]+) -->\n```\n)(?P<body>.*?)(```\n<!-- /sample -->)", re.S)
# Figures that differ between runs: masked when checking. Timings; and the zip size of the example model
# itself, whose training is not bit-reproducible from run to run (its zip varied by 33 bytes of 2 MB while
# every clustered figure stayed the same).
VOLATILE = ((re.compile(r"^time \d+\.\d+ s \(.*\)$", re.M), "<time>"), (re.compile(r"\b\d+\.\d+ s\b"), "<time>"),
            (re.compile(r"^zipped [\d,]+ -> ([\d,]+) bytes \([\d.]+x smaller\)$", re.M), r"zipped <input> -> \1 bytes"))
PLOT = "docs/inspect_clustered_k16.png"

# name -> commands, run in order in one folder holding digits.pb (and docs/ for the plot).
SAMPLES = {
    "compress": ["gpucompress compress digits.pb --zip-sizes"],
    "compress-k16": ["gpucompress compress digits.pb -o digits16.pb --n_clusters 16 --report report16.json"],
    "inspect-k16": [f"gpucompress inspect digits16.pb --plot {PLOT} --top 3"],
    "verify-k16": ["gpucompress verify digits.pb digits16.pb --fail-above 0.05", "echo $?"],
}


def blocks(text: str) -> dict[str, str]:
    """Return {sample name: block body} of the README's marked samples."""
    return {match["name"]: match["body"] for match in BLOCK.finditer(text)}


def commands_of(body: str) -> list[str]:
    """Return the `$ command` lines of a sample body, without the prompt."""
    return [line[2:] for line in body.splitlines() if line.startswith("$ ")]


def run_samples(folder: Path) -> dict[str, str]:
    """Run every sample's commands in `folder`; returns {name: block body}."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "COLUMNS": "120",
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_example_model.py"), str(folder / "digits.pb")],
                   check=True, capture_output=True, env=environment)
    (folder / "docs").mkdir()
    bodies = {}
    status = 0
    for name, commands in SAMPLES.items():
        lines = []
        for command in commands:
            lines.append(f"$ {command}")
            if command == "echo $?":
                lines.append(str(status))
                continue
            arguments = shlex.split(command)
            done = subprocess.run([sys.executable, "-m", "gpucompress", *arguments[1:]], cwd=folder,
                                  capture_output=True, text=True, env=environment)
            status = done.returncode
            # TensorFlow's C++ start-up chatter is not the tool's output.
            errors = [line for line in done.stderr.splitlines()
                      if not line.startswith(("I0000", "WARNING: All log messages", "W0000", "E0000"))]
            lines += done.stdout.rstrip("\n").splitlines() + errors
        bodies[name] = "\n".join(lines) + "\n"
    return bodies


def masked(body: str) -> str:
    """Return a sample body with its run-to-run varying figures masked."""
    for pattern, replacement in VOLATILE:
        body = pattern.sub(replacement, body)
    return body


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write; exit 1 on a difference")
    arguments = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    present = blocks(text)
    if set(present) != set(SAMPLES):
        print(f"README.md samples {sorted(present)} differ from the script's {sorted(SAMPLES)}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gpucompress-samples-") as folder:
        bodies = run_samples(Path(folder))
        if arguments.check:
            stale = [name for name in SAMPLES if masked(bodies[name]) != masked(present[name])]
            for name in stale:
                print(f"README.md sample {name!r} no longer matches the tool; now:\n{bodies[name]}", file=sys.stderr)
            return 1 if stale else 0
        README.write_text(BLOCK.sub(lambda m: m.group(1) + bodies[m["name"]] + m.group(4), text), encoding="utf-8")
        shutil.copyfile(Path(folder) / PLOT, ROOT / PLOT)
    print(f"rewrote {len(SAMPLES)} samples in {README} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
