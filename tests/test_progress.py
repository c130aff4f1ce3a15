"""Progress on a terminal: per tensor (count and name), and nothing without a terminal or with -q.

The CLI runs in a real pseudo-terminal (a child process, as a person runs it);
GPUCOMPRESS_PROGRESS_DELAY=0 shows the bar at once, so that a tiny model's
fast run still draws it.
"""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

from gpucompress.models import read_model
from gpucompress.progress import DELAY_VARIABLE, progress_wanted


def _environment(delay="0"):
    return {**os.environ, DELAY_VARIABLE: delay, "TF_CPP_MIN_LOG_LEVEL": "2"}


def run_in_terminal(arguments, env, columns=200) -> tuple[int, str]:
    """Run `python -m gpucompress ARGUMENTS` with stdin, stdout and stderr on a pty; return (code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen([sys.executable, "-m", "gpucompress", *arguments], stdin=slave, stdout=slave,
                               stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    return process.wait(timeout=120), output.decode("utf-8", "replace")


@pytest.mark.parametrize("command", ["compress", "pack"])
def test_a_terminal_shows_the_tensor_count_and_the_current_tensor(keras_frozen, tmp_path, command):
    path, _ = keras_frozen
    names = [w.name for w in read_model(path).weights()]
    code, output = run_in_terminal([command, str(path), "-o", str(tmp_path / "out")], _environment())
    assert code == 0, output
    draws = [line for line in output.split("\r") if f"{command}:" in line]
    assert draws, output
    # the total is the number of weights, and a draw names a tensor of the model
    assert any(f"/{len(names)} " in line for line in draws), draws
    assert any(name[-30:] in line for line in draws for name in names), draws
    # counted per tensor: more distinct counts than the model has engine batches (one here)
    counts = {line.split("|")[2].split("/")[0].strip() for line in draws if line.count("|") >= 2}
    assert len(counts) >= 2, draws
    assert f"wrote {tmp_path / 'out'}" in output


def test_quiet_prints_nothing_even_on_a_terminal(keras_frozen, tmp_path):
    path, _ = keras_frozen
    code, output = run_in_terminal(["compress", str(path), "-o", str(tmp_path / "out"), "-q"], _environment())
    assert code == 0
    assert output == ""


def test_without_a_terminal_no_progress_is_drawn(keras_frozen, tmp_path):
    path, _ = keras_frozen
    done = subprocess.run([sys.executable, "-m", "gpucompress", "compress", str(path), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=_environment(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tensors/s" not in done.stderr + done.stdout and "\r" not in done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'out'}")


def test_progress_is_wanted_only_on_a_terminal_and_not_quiet():
    # Under pytest, stdout is captured: not a terminal.
    assert not progress_wanted(quiet=False)
    assert not progress_wanted(quiet=True)
