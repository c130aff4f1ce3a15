"""The README's sample outputs come from docs/make_samples.py (it runs the tool and rewrites them)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "docs" / "make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_readme_sample_is_the_scripts_commands_with_their_output():
    script = _script()
    present = script.blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert set(present) == set(script.SAMPLES)
    for name, commands in script.SAMPLES.items():
        assert script.commands_of(present[name]) == commands, name
        # each command is followed by what it printed, not left empty
        assert len(present[name].splitlines()) > len(commands), name


def test_masking_hides_timings_only():
    script = _script()
    line = "time 0.60 s (parse 0.04, select 0.09, cluster 0.43, write 0.03)\nsize 2,184,585 -> 2,184,585 bytes\n"
    assert script.masked(line) == "<time>\nsize 2,184,585 -> 2,184,585 bytes\n"


@pytest.mark.slow
def test_readme_samples_match_the_tool():
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "docs" / "make_samples.py"), "--check"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
