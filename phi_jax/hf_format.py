"""The Hugging Face phi checkpoint format: config and tensor name tables, reading and writing.

`load_hf(dir)` reads a `transformers` PhiForCausalLM directory (config.json plus
`model.safetensors` or a sharded `model.safetensors.index.json`), or one of the older
microsoft/phi-1 layouts with a fused `mixer.Wqkv` (model_type `phi-msft` and
`mixformer-sequential`). `save_hf(config, params, dir)` writes the PhiForCausalLM layout.
The command line that moves weights between this format and orbax workdirs is phi_jax.convert.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy

from phi_jax import model as model_lib

ModelConfig = model_lib.ModelConfig

_HF_ACTIVATIONS = {
  "gelu_new": "gelu_tanh",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_fast": "gelu_tanh",
  "gelu": "gelu",
}
_LEGACY_TYPES = ("phi-msft", "mixformer-sequential")
_SUPPORTED = ("PhiForCausalLM (model_type 'phi')", "phi-msft", "mixformer-sequential")


class CheckpointError(ValueError):
  """A Hugging Face directory that is not a complete phi checkpoint of the stated shape."""


# --------------------------------------------------------------------------- configs


def config_from_hf(hf: Mapping[str, Any]) -> ModelConfig:
  """The ModelConfig of a Hugging Face config.json (modern or legacy phi)."""
  model_type = hf.get("model_type")
  if model_type in _LEGACY_TYPES:
    hf = _modern_config(hf)
  elif model_type != "phi":
    raise CheckpointError(
      f"unknown architecture: model_type={model_type!r}, architectures={hf.get('architectures')}; "
      f"phi_jax converts {', '.join(_SUPPORTED)}"
    )
  heads = hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
  rope = dict(hf.get("rope_parameters") or {})
  rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  rotary_factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
  if rope.get("rope_type", "default") != "default":
    raise CheckpointError(
      f"rope_type={rope['rope_type']!r} is not supported; only 'default' rotary"
    )
  act = hf.get("hidden_act", "gelu_new")
  if act not in _HF_ACTIVATIONS:
    raise CheckpointError(
      f"hidden_act={act!r} is not supported; expected one of {sorted(_HF_ACTIVATIONS)}"
    )
  return ModelConfig(
    vocab_size=hf["vocab_size"],
    d_model=hf["hidden_size"],
    n_layers=hf["num_hidden_layers"],
    n_heads=heads,
    n_kv_heads=hf.get("num_key_value_heads") or heads,
    head_dim=head_dim,
    mlp_dim=hf["intermediate_size"],
    rotary_dim=int(head_dim * rotary_factor),
    rope_base=float(rope_theta),
    max_len=hf.get("max_position_embeddings", 2048),
    layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
    activation=_HF_ACTIVATIONS[act],
    qk_layernorm=bool(hf.get("qk_layernorm", False)),
    embed_dropout=float(hf.get("embd_pdrop") or 0.0),
    resid_dropout=float(hf.get("resid_pdrop") or 0.0),
    attn_dropout=float(hf.get("attention_dropout") or 0.0),
    init_std=float(hf.get("initializer_range", 0.02)),
  )


def _modern_config(hf: Mapping[str, Any]) -> dict:
  """Legacy (n_embd, n_head, ...) config keys in PhiConfig's names."""
  d_model, heads = hf["n_embd"], hf["n_head"]
  return {
    "model_type": "phi",
    "vocab_size": hf["vocab_size"],
    "hidden_size": d_model,
    "num_hidden_layers": hf["n_layer"],
    "num_attention_heads": heads,
    "num_key_value_heads": hf.get("n_head_kv") or heads,
    "intermediate_size": hf.get("n_inner") or 4 * d_model,
    "partial_rotary_factor": hf.get("rotary_dim", 32) / (d_model // heads),
    "max_position_embeddings": hf.get("n_positions", 2048),
    "layer_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
    "hidden_act": hf.get("activation_function", "gelu_new"),
    "embd_pdrop": hf.get("embd_pdrop"),
    "resid_pdrop": hf.get("resid_pdrop"),
    "attention_dropout": hf.get("attn_pdrop"),
    "initializer_range": hf.get("initializer_range", 0.02),
  }


def config_to_hf(config: ModelConfig, dtype: str) -> dict:
  """A config.json that transformers' PhiConfig reads back to the same architecture."""
  hf_act = {"gelu_tanh": "gelu_new", "gelu": "gelu"}[config.activation]
  hf = {
    "architectures": ["PhiForCausalLM"],
    "model_type": "phi",
    "vocab_size": config.vocab_size,
    "hidden_size": config.d_model,
    "intermediate_size": config.mlp_dim,
    "num_hidden_layers": config.n_layers,
    "num_attention_heads": config.n_heads,
    "num_key_value_heads": config.num_kv_heads,
    "hidden_act": hf_act,
    "max_position_embeddings": config.max_len,
    "layer_norm_eps": config.layer_norm_eps,
    "qk_layernorm": config.qk_layernorm,
    "embd_pdrop": config.embed_dropout,
    "resid_pdrop": config.resid_dropout,
    "attention_dropout": config.attn_dropout,
    "initializer_range": config.init_std,
    "tie_word_embeddings": False,
    "dtype": dtype,
    # Both spellings: transformers >= 5 reads rope_parameters, 4.x the top-level keys.
    "rope_parameters": {
      "rope_type": "default",
      "rope_theta": config.rope_base,
      "partial_rotary_factor": config.rotary_dim / config.head_dim,
    },
    "rope_theta": config.rope_base,
    "partial_rotary_factor": config.rotary_dim / config.head_dim,
  }
  if config.head_dim * config.n_heads != config.d_model:
    hf["head_dim"] = config.head_dim
  return hf


# --------------------------------------------------------------------------- tensors


class _Entry:
  """One HF tensor <-> one (per-layer slice of a) phi_jax param."""

  def __init__(
    self,
    hf_name: str,
    path: tuple[str, ...],
    hf_shape: tuple[int, ...],
    ours_shape: tuple[int, ...],
    transposed: bool,
  ):
    self.hf_name, self.path, self.hf_shape, self.ours_shape = hf_name, path, hf_shape, ours_shape
    self.transposed = transposed  # torch Linear weights are [out, in]; ours are [in, ...out]

  def to_ours(self, tensor: np.ndarray) -> np.ndarray:
    return (tensor.T if self.transposed else tensor).reshape(self.ours_shape)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    if self.transposed:
      return np.ascontiguousarray(value.reshape(self.hf_shape[::-1]).T)
    return value.reshape(self.hf_shape)


def _entries(c: ModelConfig) -> tuple[list[_Entry], list[_Entry]]:
  """(top-level entries, per-layer entries with '{i}' in the HF name)."""
  d, v, f, hd = c.d_model, c.vocab_size, c.mlp_dim, c.head_dim
  q, kv = c.n_heads * hd, c.num_kv_heads * hd
  # A table, one HF tensor a line: it reads better than the formatter's layout.
  # fmt: off
  top = [
    _Entry("model.embed_tokens.weight", ("embed_tokens", "embedding"), (v, d), (v, d), False),
    _Entry("model.final_layernorm.weight", ("final_layernorm", "scale"), (d,), (d,), False),
    _Entry("model.final_layernorm.bias", ("final_layernorm", "bias"), (d,), (d,), False),
    _Entry("lm_head.weight", ("lm_head", "kernel"), (v, d), (d, v), True),
    _Entry("lm_head.bias", ("lm_head", "bias"), (v,), (v,), False),
  ]
  pre = "model.layers.{i}."
  layer = [
    _Entry(pre + "input_layernorm.weight", ("input_layernorm", "scale"), (d,), (d,), False),
    _Entry(pre + "input_layernorm.bias", ("input_layernorm", "bias"), (d,), (d,), False),
    _Entry(pre + "self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), (q, d), (d, c.n_heads, hd), True),
    _Entry(pre + "self_attn.q_proj.bias", ("attn", "q_proj", "bias"), (q,), (c.n_heads, hd), False),
    _Entry(pre + "self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), (kv, d), (d, c.num_kv_heads, hd), True),
    _Entry(pre + "self_attn.k_proj.bias", ("attn", "k_proj", "bias"), (kv,), (c.num_kv_heads, hd), False),
    _Entry(pre + "self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), (kv, d), (d, c.num_kv_heads, hd), True),
    _Entry(pre + "self_attn.v_proj.bias", ("attn", "v_proj", "bias"), (kv,), (c.num_kv_heads, hd), False),
    _Entry(pre + "self_attn.dense.weight", ("attn", "dense", "kernel"), (d, q), (c.n_heads, hd, d), True),
    _Entry(pre + "self_attn.dense.bias", ("attn", "dense", "bias"), (d,), (d,), False),
    _Entry(pre + "mlp.fc1.weight", ("mlp", "fc1", "kernel"), (f, d), (d, f), True),
    _Entry(pre + "mlp.fc1.bias", ("mlp", "fc1", "bias"), (f,), (f,), False),
    _Entry(pre + "mlp.fc2.weight", ("mlp", "fc2", "kernel"), (d, f), (f, d), True),
    _Entry(pre + "mlp.fc2.bias", ("mlp", "fc2", "bias"), (d,), (d,), False),
  ]
  # fmt: on
  if c.qk_layernorm:
    for which in ("q", "k"):
      for hf_part, ours in (("weight", "scale"), ("bias", "bias")):
        layer.append(
          _Entry(
            f"{pre}self_attn.{which}_layernorm.{hf_part}",
            ("attn", f"{which}_layernorm", ours),
            (hd,),
            (hd,),
            False,
          )
        )
  return top, layer


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def params_from_hf_tensors(
  config: ModelConfig, get: Callable[[str], np.ndarray], names: set[str], where: str = "checkpoint"
) -> dict:
  """Builds phi_jax params from HF-named tensors, checking every name and shape."""
  top, layer = _entries(config)

  def fetch(entry: _Entry, name: str) -> np.ndarray:
    if name not in names:
      raise CheckpointError(f"{where}: missing key '{name}' (expected shape {entry.hf_shape})")
    tensor = get(name)
    if tuple(tensor.shape) != entry.hf_shape:
      raise CheckpointError(
        f"{where}: key '{name}' has shape {tuple(tensor.shape)}, expected "
        f"{entry.hf_shape} for the architecture in config.json"
      )
    return entry.to_ours(tensor)

  params: dict = {}
  for entry in top:
    _set(params, entry.path, fetch(entry, entry.hf_name))
  for entry in layer:
    stacked = [fetch(entry, entry.hf_name.format(i=i)) for i in range(config.n_layers)]
    _set(params, ("layers",) + entry.path, np.stack(stacked))
  expected = {e.hf_name for e in top} | {
    e.hf_name.format(i=i) for e in layer for i in range(config.n_layers)
  }
  unexpected = sorted(names - expected)
  if unexpected:
    raise CheckpointError(
      f"{where}: unexpected keys {unexpected[:5]}"
      f"{' ...' if len(unexpected) > 5 else ''} for the architecture in config.json"
    )
  return params


def params_to_hf_tensors(config: ModelConfig, params: Mapping) -> dict[str, np.ndarray]:
  top, layer = _entries(config)
  tensors = {e.hf_name: e.to_hf(np.asarray(_get(params, e.path))) for e in top}
  for entry in layer:
    stacked = np.asarray(_get(params["layers"], entry.path))
    for i in range(config.n_layers):
      tensors[entry.hf_name.format(i=i)] = entry.to_hf(stacked[i])
  return tensors


def _legacy_names(config: ModelConfig, model_type: str) -> dict[str, str]:
  """Modern HF name -> legacy name, for everything but the fused Wqkv (split separately)."""
  if model_type == "phi-msft":
    embed, final, head = "transformer.embd.wte", "lm_head.ln", "lm_head.linear"
    block = "transformer.h.{i}."
  else:  # mixformer-sequential: layer 0 is the embedding, 1..L the blocks, L+1 the head
    embed, final, head = (
      "layers.0.wte",
      f"layers.{config.n_layers + 1}.ln",
      f"layers.{config.n_layers + 1}.linear",
    )
    block = "layers.{j}."
  names = {"model.embed_tokens.weight": f"{embed}.weight"}
  for part in ("weight", "bias"):
    names[f"model.final_layernorm.{part}"] = f"{final}.{part}"
    names[f"lm_head.{part}"] = f"{head}.{part}"
  for i in range(config.n_layers):
    prefix = block.format(i=i, j=i + 1)
    for part in ("weight", "bias"):
      names[f"model.layers.{i}.input_layernorm.{part}"] = f"{prefix}ln.{part}"
      names[f"model.layers.{i}.self_attn.dense.{part}"] = f"{prefix}mixer.out_proj.{part}"
      names[f"model.layers.{i}.mlp.fc1.{part}"] = f"{prefix}mlp.fc1.{part}"
      names[f"model.layers.{i}.mlp.fc2.{part}"] = f"{prefix}mlp.fc2.{part}"
      names[f"model.layers.{i}.self_attn.Wqkv.{part}"] = f"{prefix}mixer.Wqkv.{part}"
  return names


class _LegacyView:
  """Presents a fused-Wqkv checkpoint under the modern names, splitting q|k|v rows."""

  def __init__(self, config: ModelConfig, model_type: str, get, names: set[str], where: str):
    self.config, self.get_raw, self.where = config, get, where
    self.to_legacy = _legacy_names(config, model_type)
    self.names = set()
    for modern, legacy in self.to_legacy.items():
      if legacy not in names:
        continue
      if ".Wqkv." in modern:
        self.names |= {modern.replace("Wqkv", proj) for proj in ("q_proj", "k_proj", "v_proj")}
      else:
        self.names.add(modern)
    known = set(self.to_legacy.values())
    self.names |= {n for n in names if n not in known}  # reported as unexpected downstream

  def get(self, name: str) -> np.ndarray:
    for index, proj in enumerate(("q_proj", "k_proj", "v_proj")):
      if f".{proj}." in name:
        fused_name = self.to_legacy[name.replace(proj, "Wqkv")]
        fused = self.get_raw(fused_name)
        c = self.config
        sizes = [c.n_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]
        if fused.shape[0] != sum(sizes):
          raise CheckpointError(
            f"{self.where}: key '{fused_name}' has shape {tuple(fused.shape)}, "
            f"expected ({sum(sizes)}, ...) rows q|k|v"
          )
        start = sum(sizes[:index])
        return fused[start : start + sizes[index]]
    return self.get_raw(self.to_legacy.get(name, name))


# --------------------------------------------------------------------------- files


def _open_tensors(path: Path) -> tuple[Callable[[str], np.ndarray], set[str]]:
  """A getter and the names of all tensors in the directory's safetensors file(s)."""
  index_file = path / "model.safetensors.index.json"
  if index_file.exists():
    weight_map = json.loads(index_file.read_text())["weight_map"]
    files = sorted(set(weight_map.values()))
  elif (path / "model.safetensors").exists():
    files = ["model.safetensors"]
  else:
    raise CheckpointError(
      f"{path}: no model.safetensors or model.safetensors.index.json "
      "(only safetensors checkpoints are read; convert .bin files with "
      "transformers' save_pretrained(safe_serialization=True))"
    )
  location: dict[str, str] = {}
  for file in files:
    if not (path / file).exists():
      raise CheckpointError(f"{path}: shard '{file}' named in the index is missing")
    with safetensors.safe_open(path / file, framework="numpy") as f:
      for name in f.keys():
        location[name] = file

  def get(name: str) -> np.ndarray:
    with safetensors.safe_open(path / location[name], framework="numpy") as f:
      return f.get_tensor(name)

  return get, set(location)


def load_hf(path: str | os.PathLike, param_dtype: str = "float32") -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) from a Hugging Face phi directory; params are numpy in param_dtype."""
  path = Path(path)
  if not (path / "config.json").exists():
    raise CheckpointError(f"{path}: no config.json; expected a Hugging Face model directory")
  hf_config = json.loads((path / "config.json").read_text())
  config = config_from_hf(hf_config)
  get, names = _open_tensors(path)
  model_type = hf_config.get("model_type")
  if model_type in _LEGACY_TYPES:
    view = _LegacyView(config, model_type, get, names, str(path))
    get, names = view.get, view.names
  elif hf_config.get("tie_word_embeddings") and "lm_head.weight" not in names:
    raw_get = get
    get = lambda n: raw_get("model.embed_tokens.weight" if n == "lm_head.weight" else n)
    names = names | {"lm_head.weight"}
  params = params_from_hf_tensors(config, get, names, where=str(path))
  dtype = model_lib.DTYPES[param_dtype]
  return config, jax.tree.map(lambda x: x.astype(dtype), params)


def save_hf(
  config: Any,
  params: Mapping,
  path: str | os.PathLike,
  *,
  dtype: str | None = None,
  max_shard_bytes: int = 4 << 30,
  extra_config: Mapping[str, Any] | None = None,
) -> None:
  """Writes a PhiForCausalLM directory (config.json + safetensors, sharded past max_shard_bytes).

  dtype: tensor dtype on disk (default: the params' own). The directory appears only once
  complete: files are written to a temporary sibling that is then renamed.
  """
  config = model_lib.as_model_config(config)
  path = Path(path)
  if path.exists() and any(path.iterdir()):
    raise FileExistsError(f"{path} exists and is not empty; choose a new directory")
  tensors = params_to_hf_tensors(config, params)
  if dtype is not None:
    tensors = {k: v.astype(model_lib.DTYPES[dtype]) for k, v in tensors.items()}
  disk_dtype = str(next(iter(tensors.values())).dtype)
  hf_config = config_to_hf(config, disk_dtype)
  hf_config.update(extra_config or {})

  path.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    shards = _shard(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
      safetensors.numpy.save_file(shards[0], staging / "model.safetensors", metadata=metadata)
    else:
      weight_map = {}
      for n, shard in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, staging / file, metadata=metadata)
        weight_map.update({name: file for name in shard})
      total = sum(v.nbytes for v in tensors.values())
      (staging / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
      )
    (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    if path.exists():
      path.rmdir()
    staging.rename(path)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _shard(tensors: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, tensor in tensors.items():
    if shards[-1] and size + tensor.nbytes > max_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = tensor
    size += tensor.nbytes
  return shards
