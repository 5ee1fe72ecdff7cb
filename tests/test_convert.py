"""Hugging Face interop: logits parity with transformers, bit-exact round trips, clear errors,
and the conversion CLI (phi_jax.convert)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.numpy
import xla_env

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from phi_jax import checkpoint, hf_format, model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SHAPES = {
  "phi1_like": dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4
  ),
  "gqa_qk_norm": dict(
    hidden_size=96,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    qk_layernorm=True,
  ),
  "full_rotary": dict(
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=3,
    partial_rotary_factor=1.0,
    rope_theta=500.0,
    hidden_act="gelu",
  ),
}


def _hf_model(shape="phi1_like", vocab=113, seed=0):
  torch.manual_seed(seed)
  hf_config = transformers.PhiConfig(vocab_size=vocab, max_position_embeddings=128, **SHAPES[shape])
  hf_model = transformers.PhiForCausalLM(hf_config).eval()
  with torch.no_grad():  # larger than the 0.02 init, so that every weight matters to the logits
    for p in hf_model.parameters():
      p.normal_(0.0, 0.15)
  return hf_model


def _hf_logits(hf_model, tokens):
  with torch.no_grad():
    return hf_model(torch.as_tensor(np.asarray(tokens))).logits.float().numpy()


def _tokens(batch, length, vocab=113, seed=0):
  return np.random.RandomState(seed).randint(0, vocab, (batch, length))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_transformers(tmp_path, shape):
  hf_model = _hf_model(shape)
  hf_model.save_pretrained(tmp_path)
  config, params = hf_format.load_hf(tmp_path)
  for length in (1, 17, 64):
    tokens = _tokens(3, length, seed=length)
    ours = np.asarray(model.forward(config, params, tokens))
    assert np.abs(ours - _hf_logits(hf_model, tokens)).max() <= 1e-4


def test_save_after_load_is_bit_exact_and_reloads_in_transformers(tmp_path):
  hf_model = _hf_model()
  hf_model.save_pretrained(tmp_path / "src")
  config, params = hf_format.load_hf(tmp_path / "src")
  hf_format.save_hf(config, params, tmp_path / "out")
  original = safetensors.numpy.load_file(tmp_path / "src" / "model.safetensors")
  exported = safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors")
  assert original.keys() == exported.keys()
  for name, tensor in original.items():
    assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name
  reloaded = transformers.PhiForCausalLM.from_pretrained(tmp_path / "out").eval()
  tokens = _tokens(2, 33)
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))


def test_sharded_checkpoints_both_ways(tmp_path):
  hf_model = _hf_model()
  hf_model.save_pretrained(tmp_path / "src")
  config, params = hf_format.load_hf(tmp_path / "src")
  hf_format.save_hf(config, params, tmp_path / "sharded", max_shard_bytes=64 << 10)
  index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 2
  _, params2 = hf_format.load_hf(tmp_path / "sharded")
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  reloaded = transformers.PhiForCausalLM.from_pretrained(tmp_path / "sharded").eval()
  tokens = _tokens(2, 9)
  np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))


def test_bf16_checkpoint_round_trips(tmp_path):
  hf_model = _hf_model().to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path / "src")
  config, params = hf_format.load_hf(tmp_path / "src")
  hf_format.save_hf(config, params, tmp_path / "out", dtype="bfloat16")
  original = safetensors.numpy.load_file(tmp_path / "src" / "model.safetensors")
  exported = safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors")
  for name, tensor in original.items():
    assert str(exported[name].dtype) == "bfloat16" and np.array_equal(exported[name], tensor), name


def _write_legacy(hf_model, path, model_type):
  """The pre-transformers microsoft/phi-1 layouts, with q|k|v fused into mixer.Wqkv."""
  c = hf_model.config
  state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
  n = c.num_hidden_layers
  if model_type == "phi-msft":
    names = {
      "embed": "transformer.embd.wte",
      "final": "lm_head.ln",
      "head": "lm_head.linear",
      "block": lambda i: f"transformer.h.{i}",
    }
    arch = "PhiForCausalLM"
  else:
    names = {
      "embed": "layers.0.wte",
      "final": f"layers.{n + 1}.ln",
      "head": f"layers.{n + 1}.linear",
      "block": lambda i: f"layers.{i + 1}",
    }
    arch = "MixFormerSequentialForCausalLM"
  out = {f"{names['embed']}.weight": state["model.embed_tokens.weight"]}
  for part in ("weight", "bias"):
    out[f"{names['final']}.{part}"] = state[f"model.final_layernorm.{part}"]
    out[f"{names['head']}.{part}"] = state[f"lm_head.{part}"]
    for i in range(n):
      src, dst = f"model.layers.{i}.", names["block"](i) + "."
      out[dst + f"ln.{part}"] = state[src + f"input_layernorm.{part}"]
      out[dst + f"mixer.Wqkv.{part}"] = np.concatenate(
        [state[src + f"self_attn.{p}_proj.{part}"] for p in "qkv"], axis=0
      )
      out[dst + f"mixer.out_proj.{part}"] = state[src + f"self_attn.dense.{part}"]
      out[dst + f"mlp.fc1.{part}"] = state[src + f"mlp.fc1.{part}"]
      out[dst + f"mlp.fc2.{part}"] = state[src + f"mlp.fc2.{part}"]
  path.mkdir()
  safetensors.numpy.save_file(out, path / "model.safetensors")
  legacy_config = {
    "model_type": model_type,
    "architectures": [arch],
    "vocab_size": c.vocab_size,
    "n_embd": c.hidden_size,
    "n_head": c.num_attention_heads,
    "n_layer": n,
    "n_inner": c.intermediate_size,
    "rotary_dim": 8,
    "n_positions": 128,
    "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new",
  }
  (path / "config.json").write_text(json.dumps(legacy_config))


@pytest.mark.parametrize("model_type", ["phi-msft", "mixformer-sequential"])
def test_legacy_fused_wqkv_layouts(tmp_path, model_type):
  hf_model = _hf_model()
  _write_legacy(hf_model, tmp_path / "legacy", model_type)
  config, params = hf_format.load_hf(tmp_path / "legacy")
  tokens = _tokens(2, 21)
  assert (
    np.abs(np.asarray(model.forward(config, params, tokens)) - _hf_logits(hf_model, tokens)).max()
    <= 1e-4
  )


def test_broken_checkpoints_name_the_key_and_shape(tmp_path):
  hf_model = _hf_model()
  hf_model.save_pretrained(tmp_path / "good")
  tensors = safetensors.numpy.load_file(tmp_path / "good" / "model.safetensors")

  def variant(name, mutate_tensors=None, mutate_config=None):
    path = tmp_path / name
    shutil.copytree(tmp_path / "good", path)
    if mutate_tensors:
      safetensors.numpy.save_file(mutate_tensors(dict(tensors)), path / "model.safetensors")
    if mutate_config:
      cfg = json.loads((path / "config.json").read_text())
      (path / "config.json").write_text(json.dumps(mutate_config(cfg)))
    return path

  def drop(t):
    del t["model.layers.1.mlp.fc2.bias"]
    return t

  with pytest.raises(
    hf_format.CheckpointError,
    match=r"missing key 'model.layers.1.mlp.fc2.bias' \(expected shape \(64,\)\)",
  ):
    hf_format.load_hf(variant("missing", drop))

  def reshape(t):
    t["model.layers.2.self_attn.q_proj.weight"] = t["model.layers.2.self_attn.q_proj.weight"][:32]
    return t

  with pytest.raises(
    hf_format.CheckpointError,
    match=r"'model.layers.2.self_attn.q_proj.weight' has shape \(32, 64\), expected \(64, 64\)",
  ):
    hf_format.load_hf(variant("shape", reshape))

  with pytest.raises(hf_format.CheckpointError, match="unknown architecture: model_type='llama'"):
    hf_format.load_hf(variant("arch", mutate_config=lambda c: {**c, "model_type": "llama"}))

  def extra(t):
    t["model.layers.9.mlp.fc1.bias"] = t["model.layers.0.mlp.fc1.bias"]
    return t

  with pytest.raises(
    hf_format.CheckpointError, match="unexpected keys.*model.layers.9.mlp.fc1.bias"
  ):
    hf_format.load_hf(variant("extra", extra))

  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text((tmp_path / "good" / "config.json").read_text())
  with pytest.raises(hf_format.CheckpointError, match="no model.safetensors"):
    hf_format.load_hf(tmp_path / "empty")


def test_save_hf_never_leaves_a_partial_directory(tmp_path):
  config, params = hf_format.load_hf(_saved(tmp_path))
  target = tmp_path / "export"
  broken = jax.tree.map(lambda x: x, params)
  del broken["lm_head"]["bias"]
  with pytest.raises(KeyError):
    hf_format.save_hf(config, broken, target)
  assert not target.exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
  hf_format.save_hf(config, params, target)
  with pytest.raises(FileExistsError, match="not empty"):
    hf_format.save_hf(config, params, target)


def _saved(tmp_path):
  _hf_model().save_pretrained(tmp_path / "src")
  return tmp_path / "src"


def _convert(args, cwd):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=xla_env.flags(1),
    PYTHONPATH=str(REPO),
  )
  return subprocess.run(
    [sys.executable, "-m", "phi_jax.convert", *args],
    capture_output=True,
    text=True,
    cwd=cwd,
    env=env,
    timeout=300,
  )


def test_cli_round_trip_through_orbax_with_relative_paths(tmp_path):
  src = _saved(tmp_path)
  result = _convert(["hf_to_orbax", "--hf_dir=src", "--out=run"], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  config, params = checkpoint.restore_params(tmp_path / "run")
  assert config == hf_format.load_hf(src)[0]
  result = _convert(["orbax_to_hf", "--workdir=run", "--out=back", "--dtype=float32"], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  original = safetensors.numpy.load_file(src / "model.safetensors")
  back = safetensors.numpy.load_file(tmp_path / "back" / "model.safetensors")
  for name, tensor in original.items():
    assert np.array_equal(back[name], tensor), name


@pytest.mark.parametrize(
  "args, named",
  [
    (["hf_to_orbx", "--hf_dir=src", "--out=run"], "unknown command 'hf_to_orbx'"),
    (["--hf_dir=src", "--out=run"], "no command given"),
    (["orbax_to_hf", "--out=back"], "orbax_to_hf needs --workdir"),
    (["hf_to_orbax", "--hf_dir=src", "--out=run", "--step=3"], "hf_to_orbax takes no --step"),
  ],
)
def test_cli_usage_errors_exit_2_naming_the_mistake(tmp_path, args, named):
  result = _convert(args, cwd=tmp_path)
  assert result.returncode == 2
  assert named in result.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "run").exists()
