from setuptools import setup

# `kernels`, `recipes` and `evals` live at the top level of the repository (the layout users asked
# for) but install as `compress.kernels`, `compress.recipes` and `compress.evals`: a top-level
# module named `kernels` would be imported by transformers as the Hugging Face `kernels` package.
setup(
    name="moe-compress",
    version="0.1.0",
    description="Prune, merge and distill Mixture-of-Experts language models, and prove what quality survives",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "compress",
        "compress.checkpoint",
        "compress.cli",
        "compress.data",
        "compress.stats",
        "compress.pruning",
        "compress.merging",
        "compress.jobs",
        "compress.models",
        "compress.analyze",
        "compress.families",
        "compress.kernels",
        "compress.recipes",
        "compress.tiering",
        "compress.routing_report",
        "compress.evals",
        "compress.evals.tasks",
    ],
    package_dir={
        "compress": "compress",
        "compress.kernels": "kernels",
        "compress.recipes": "recipes",
        "compress.evals": "evals",
    },
    package_data={
        "compress": ["demo_model/*"],
        "compress.families": ["definitions/*.json"],
        "compress.kernels": ["configs/*.json"],
        "compress.recipes": ["*.yaml"],
        "compress.evals.tasks": ["*.yaml"],
        "compress.routing_report": ["*.js", "*.css"],
    },
    install_requires=[
        "torch>=2.6",
        "transformers>=5.23,<5.25",  # the releases the suite has run on; it uses transformers internals
        "safetensors>=0.4",
        "huggingface_hub>=0.30",
        "accelerate>=1.0",
        "tokenizers>=0.20",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "scipy>=1.10",  # the Hungarian method of neuron alignment (merge --align weights)
    ],
    extras_require={
        "kernels": ["triton>=3.0"],
        "eval": ["lm-eval>=0.4.5"],
        "data": ["datasets>=3.0", "pyarrow>=14"],
        "dev": ["pytest>=8", "pytest-timeout>=2", "pyarrow>=14", "lm-eval>=0.4.5", "triton>=3.0; platform_system == 'Linux'",
                "ruff>=0.17,<0.18", "setuptools>=70.1",
                "selenium>=4.20"],  # the report's tests drive Debian's chromium and chromedriver (.ci/run installs them)
        # setuptools: the GPU suite's dry run installs the project offline, without build isolation,
        # as the GPU machine must
    },
    entry_points={
        "console_scripts": ["compress=compress.cli:main"],
        # vLLM loads this in every process: our per-layer architectures join its model registry
        "vllm.general_plugins": ["moe_compress = compress.vllm_plugin:register"],
    },
)
