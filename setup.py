from setuptools import setup

setup(
    name="phi_jax",
    version="0.1.0",
    description="phi-1 ('Textbooks Are All You Need') in JAX/Flax: data, training, evaluation.",
    python_requires=">=3.10",
    packages=["phi_jax", "phi_jax._configs", "data_pipeline"],
    # configs/ (the user-facing config files) is installed inside the package.
    package_dir={"phi_jax._configs": "configs"},
    install_requires=[
        "jax==0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.1.0",
        "absl-py",
        "numpy",
        "safetensors>=0.4",
        "tqdm",
    ],
    extras_require={
        # transformers is the reference implementation the tests compare against; torch is
        # pinned to the CPU build so that pip does not pull CUDA packages.
        # libtpu, at the version jax pins, for TPU ahead-of-time compilation on any machine
        # (phi_jax.aot, tests/test_aot.py); no TPU needed.
        "tpu": ["jax[tpu]==0.10.2"],
        # The data pipeline: Beam transforms (DirectRunner here, Dataflow-ready) and the quality
        # classifier's random forest (data_pipeline/quality.py).
        "data": ["apache-beam>=2.60", "scikit-learn>=1.5", "joblib>=1.3"],
        "test": ["pytest>=8", "torch==2.13.0", "transformers>=5.0", "jax[tpu]==0.10.2",
                 "apache-beam>=2.60", "scikit-learn>=1.5", "joblib>=1.3"],
    },
)
