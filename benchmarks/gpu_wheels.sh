#!/usr/bin/env bash
# Download the wheels the GPU host lacks into .whl/ (git-ignored), for benchmarks/gpu_check.sh.
#
# usage: benchmarks/gpu_wheels.sh [PYTHON_VERSION]    (default 3.12, the H200 host's Python)
#
# The host (see benchmarks/README.md, "GPU check") has no network; its Python already holds NumPy,
# CuPy (cupy-cuda13x), Numba, Cython, setuptools, tensorboard, protobuf, ml-dtypes, h5py, tqdm,
# pytest and hypothesis. gpucompress needs two more at run time, both binary: zstandard and
# constriction (imported only by the .gpcz codec, but installed with the package). TensorFlow
# is not carried (too big, and no GPU test needs it). pip matches manylinux tags exactly, hence
# the list of platforms. Prints the total size, which must stay well under a device call's 64 MiB.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python_version=${1:-3.12}
# Pinned so that the device always gets what was checked here; bump together with setup.py.
wheels=("zstandard==0.25.0" "constriction==0.5.0")
mkdir -p "$root/.whl"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_24_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
"${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
    --implementation cp "${platforms[@]}" -d "$root/.whl" "${wheels[@]}"
ls -l "$root"/.whl/*.whl
du -cb "$root"/.whl/*.whl | tail -1 | awk '{printf "total %.1f MiB\n", $1 / 1048576}'
