"""Install gpucompress: the package, its kernels (as gpucompress.kernels) and the CLI."""
from setuptools import setup

setup(
    name="gpucompress",
    version="0.1.0",
    description="GPU-accelerated weight clustering (Deep Compression) for TensorFlow models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["gpucompress", "gpucompress.commands", "gpucompress.models", "gpucompress.kernels"],
    # The kernels live at the repository root (the card's layout) and install
    # inside the package, so they import as gpucompress.kernels everywhere.
    package_dir={"gpucompress.kernels": "kernels"},
    package_data={"gpucompress.kernels": ["*.cu", "*.cuh"]},
    install_requires=[
        "numpy>=1.24",
        "protobuf>=3.20",
        # Only for its vendored TensorFlow protos (GraphDef, TensorProto):
        # they parse and write frozen graphs without importing TensorFlow.
        "tensorboard>=2.12",
        "ml_dtypes>=0.3",
    ],
    extras_require={
        "gpu": ["cupy-cuda12x>=13.0"],
        "faiss": ["faiss-cpu>=1.8"],
        # benchmarks/run.py: the peers it compares with, and its plot.
        "bench": ["faiss-cpu>=1.8", "scikit-learn>=1.3", "flash1dkmeans>=0.2", "kmeans1d>=0.4",
                  "matplotlib>=3.5"],
        "tf": ["tensorflow>=2.15"],
        "dev": [
            "pytest>=7.4",
            "hypothesis>=6.90",
            "tensorflow-cpu>=2.15",
            "scikit-learn>=1.3",
        ],
    },
    entry_points={"console_scripts": ["gpucompress=gpucompress.cli:main"]},
)
