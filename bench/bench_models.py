"""The model shapes the benchmarks share, as phi_jax ModelConfig fields that override
configs/tiny.py's model (so `tiny` overrides nothing)."""

# The ~58M phi the training and decoding benchmarks measure: large enough that the matmuls, not
# per-op overhead, set the time on a CPU.
BENCH_58M = dict(
  vocab_size=32000,
  d_model=512,
  n_layers=8,
  n_heads=8,
  head_dim=64,
  mlp_dim=2048,
  rotary_dim=32,
  max_len=2048,
  dtype="float32",
  param_dtype="float32",
  embed_dropout=0.0,
  resid_dropout=0.0,
  attn_dropout=0.0,
)

MODELS = {"tiny": {}, "bench58m": BENCH_58M}
