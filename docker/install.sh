#!/bin/sh
# Install gpucompress into a new virtual environment: the one install step of the Dockerfile.
#
# usage: install.sh VENV SOURCE [EXTRAS]
#   VENV    the virtual environment to create (it must not exist yet)
#   SOURCE  the gpucompress source tree (the folder holding setup.py)
#   EXTRAS  comma-separated extras of setup.py, e.g. "gpu,faiss-gpu-cuda12" or
#           "gpu-cuda11"; empty or left out: the package alone (the CPU engine)
#
# tests/test_docker.py runs this very script in a clean virtual environment, so
# what the image installs is what the test suite checks.
set -eu

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: install.sh VENV SOURCE [EXTRAS]" >&2
    exit 2
fi
venv=$1
source_tree=$2
extras=${3:-}
python=${PYTHON:-python3}

if [ -e "$venv" ]; then
    echo "install.sh: $venv already exists" >&2
    exit 2
fi

requirement=$source_tree
if [ -n "$extras" ]; then
    requirement="$source_tree[$extras]"
fi

"$python" -m venv "$venv"
# --no-cache-dir: no wheel cache left behind in the image.
"$venv/bin/python" -m pip install --no-cache-dir --disable-pip-version-check "$requirement"
# The installer is not needed to run gpucompress: leave it out of the image.
# (setuptools stays: tensorboard, whose protos we read, declares it.)
"$venv/bin/python" -m pip uninstall --yes --quiet --disable-pip-version-check pip
