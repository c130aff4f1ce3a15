# gpucompress on an official NVIDIA CUDA runtime image, for `docker run --gpus all`
# and `nvidia-docker run`. README.md, section "Docker (nvidia-docker)", has the
# build and run lines; tests/test_docker.py lints this file and runs its install step.
#
# Build arguments:
#   CUDA_VERSION, UBUNTU_VERSION  the base image nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
#   GPUCOMPRESS_EXTRAS            the setup.py extras installed with gpucompress
#
# Workstations and current cloud GPUs (the default; CUDA 12, driver branch 535 or later):
#   CUDA_VERSION=12.9.1 UBUNTU_VERSION=24.04 GPUCOMPRESS_EXTRAS=gpu,faiss-gpu-cuda12
#   CuPy for CUDA 12 (cupy-cuda12x) and faiss GPU for CUDA 12 (faiss-gpu-cu12,
#   whose wheels run on compute capability 7.0-8.9 only).
# CUDA 13 hosts (driver branch 580 or later; the CuPy engine alone, no faiss GPU build for CUDA 13):
#   CUDA_VERSION=13.0.0 UBUNTU_VERSION=24.04 GPUCOMPRESS_EXTRAS=gpu-cuda13
# p2.xlarge (Tesla K80, compute capability 3.7, driver 470; CUDA 12 dropped Kepler):
#   CUDA_VERSION=11.8.0 UBUNTU_VERSION=22.04 GPUCOMPRESS_EXTRAS=gpu-cuda11
#   CuPy 13.x for CUDA 11 (cupy-cuda11x, whose wheels carry sm_37 code), no faiss
#   GPU (no pip build of it runs on a K80): the CuPy engine alone. The 11.8 image
#   runs on a 470 driver through CUDA minor version compatibility.
ARG CUDA_VERSION=12.9.1
ARG UBUNTU_VERSION=24.04

# Stage 1: a virtual environment with gpucompress and its GPU libraries. gcc
# and the Python headers compile the CPU kernels (kernels/_cpu_kernels.pyx,
# with OpenMP) during `pip install`; they stay in this stage.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION} AS build
ARG GPUCOMPRESS_EXTRAS=gpu,faiss-gpu-cuda12
# Package versions follow the Ubuntu release picked by UBUNTU_VERSION, so they
# cannot be pinned here; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN sh /src/docker/install.sh /opt/gpucompress /src "${GPUCOMPRESS_EXTRAS}"

# Stage 2: the runtime image: Python, the environment, no compilers, no caches.
# libgomp1 is the OpenMP runtime the compiled kernels link to (a library, not a compiler).
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
ARG CUDA_VERSION
ARG UBUNTU_VERSION
ARG GPUCOMPRESS_EXTRAS=gpu,faiss-gpu-cuda12
LABEL org.opencontainers.image.title="gpucompress" \
      org.opencontainers.image.description="GPU-accelerated weight clustering (Deep Compression) for TensorFlow models" \
      org.opencontainers.image.base.name="nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}" \
      gpucompress.cuda-version="${CUDA_VERSION}" \
      gpucompress.extras="${GPUCOMPRESS_EXTRAS}"
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gpucompress \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin gpucompress
COPY --from=build /opt/gpucompress /opt/gpucompress
# CUPY_CACHE_DIR: CuPy compiles its GPU kernels on first use and caches them;
# /tmp is writable for any user, including one given with `docker run --user`.
# (The CPU kernels were compiled in the build stage: nothing to cache.)
ENV PATH=/opt/gpucompress/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CUPY_CACHE_DIR=/tmp/cupy-kernel-cache
# Mount the models here: docker run --gpus all -v "$PWD":/models IMAGE compress model.pb
WORKDIR /models
# A fixed numeric id (10001, clear of the images' own users, e.g. ubuntu = 1000 on
# 24.04); `docker run --user "$(id -u):$(id -g)"` writes outputs as yourself instead.
USER 10001:10001
ENTRYPOINT ["gpucompress"]
CMD ["--help"]
