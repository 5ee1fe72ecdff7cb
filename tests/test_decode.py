"""KV-cache decoding against full-forward recomputation, on the tiny config with random params
(8 simulated devices: params, cache and rows are sharded)."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi_jax import configs, decode, sharding
from phi_jax import model as model_lib

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 57))]  # 37 tokens: spans two buckets of 16
NEW = 12


@pytest.fixture(scope="module")
def tiny():
  config = model_lib.as_model_config(configs.get("tiny"))
  params = model_lib.init(config, jax.random.key(0))
  return config, params


def _full_forward_greedy(config, params, prompt, steps):
  """Greedy continuation recomputing the whole sequence every step (no cache). The sequence sits
  right-padded in a fixed buffer (one compile): causal attention ignores what follows."""
  forward = jax.jit(lambda p, t: model_lib.forward(config, p, t))
  buffer = np.zeros((1, 64), np.int32)
  buffer[0, : len(prompt)] = prompt
  for length in range(len(prompt), len(prompt) + steps):
    logits = forward(params, jnp.asarray(buffer))
    buffer[0, length] = int(jnp.argmax(logits[0, length - 1]))
  return buffer[0, len(prompt) : len(prompt) + steps].tolist()


def _sampling(**overrides):
  base = dict(max_new_tokens=NEW, prompt_bucket=16, chunk_tokens=5, eos_id=-1)
  return decode.SamplingConfig(**{**base, **overrides})


def test_greedy_equals_full_forward_recompute_for_a_mixed_length_batch(tiny):
  config, params = tiny
  decoder = decode.Decoder(config, params, _sampling())
  batch = decoder.generate(PROMPTS)
  for prompt, got in zip(PROMPTS, batch):
    assert got == _full_forward_greedy(config, params, prompt, NEW)
  # Each row alone (another bucket, other padding) gives the same tokens.
  assert [decoder.generate([p])[0] for p in PROMPTS] == batch


def test_cached_logits_match_the_full_forward(tiny):
  config, params = tiny
  tokens = jnp.asarray([list(range(3, 23))])
  full = jax.jit(lambda p, t: model_lib.forward(config, p, t))(params, tokens)
  cached = jax.jit(lambda p, t, c: model_lib.forward_with_cache(config, p, t, c))
  cache = model_lib.init_cache(config, 1, 32, jnp.asarray([4]))
  padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens[:, :12]], axis=1)
  first, cache = cached(params, padded, cache)
  steps = [first[:, 4:]]
  for i in range(12, 20):
    logits, cache = cached(params, tokens[:, i : i + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4)


def _materialized(hlo: str):
  """(shape, opcode, fused root opcode or None) of every array the compiled module `hlo` writes
  to a buffer: instructions outside fused computations (and reducers), a fusion's output being
  what its computation's ROOT makes."""
  computations = {}
  for block in re.split(r"\n(?=\S)", hlo):
    header = re.match(r"(?:ENTRY )?(%[\w.-]+)", block)
    if header:
      computations[header[1]] = block
  inner = set(re.findall(r"(?:calls|to_apply)=(%[\w.-]+)", hlo))
  instruction = re.compile(r"\s*(ROOT )?%\S+ = \w+\[([\d,]*)\]\S* ([\w-]+)\((.*)")
  for name, block in computations.items():
    if name in inner:
      continue
    for line in block.splitlines()[1:]:
      match = instruction.match(line)
      if match:
        shape = tuple(int(d) for d in match[2].split(",") if d)
        fused = re.search(r"calls=(%[\w.-]+)", match[4]) if match[3] == "fusion" else None
        root = fused and re.search(r"ROOT %\S+ = \S+ ([\w-]+)\(", computations[fused[1]])
        yield shape, match[3], root and root[1]


def test_a_decode_step_copies_neither_the_cache_nor_the_weights(tiny):
  """The compiled decode chunk makes no array as large as one layer's cache or MLP weights
  except the cache itself, updated in place: a step reads the weights and the cache once (a
  layer scan slices every layer's weights and cache out of their stacks and stacks the cache
  again, and a [batch, length, heads, dim] cache needs transposed copies for the attention
  matmuls: each a copy of the whole cache per step). Two rows: with one, XLA drops the size-1
  batch dimension of the attention matmuls and does copy the cache (see docs/measurements.md)."""
  config, params = tiny
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  sampling = _sampling(max_new_tokens=256, prompt_bucket=64, chunk_tokens=8)
  decoder = decode.Decoder(config, params, sampling, mesh)
  rows = 2
  prompts, start = np.zeros((rows, 64), np.int32), np.zeros((rows,), np.int32)
  knobs, rng = decode.sampling_knobs(sampling), jax.random.key(0)
  cache, last = jax.eval_shape(decoder._prefill, decoder.params, prompts, start, rng, knobs, 320)
  done, limit = np.zeros((rows,), bool), np.int32(8)
  chunk = decoder._chunk.lower(decoder.params, cache, last, done, rng, knobs, limit, 8)
  hlo = chunk.compile().as_text()

  layer_cache = rows * config.num_kv_heads * 320 * config.head_dim
  large = min(layer_cache, config.d_model * config.mlp_dim)
  assert rows * config.vocab_size < large  # the logits and the sampling's arrays stay below it
  made = [(shape, op, root) for shape, op, root in _materialized(hlo) if math.prod(shape) >= large]
  in_place = [m for m in made if m[1] == "fusion" and m[2] == "dynamic-update-slice"]
  views = ("parameter", "get-tuple-element", "tuple", "bitcast", "while", "conditional")
  assert [m for m in made if m not in in_place and m[1] not in views] == []
  # every layer's keys and values, each written where it is
  assert [math.prod(shape) for shape, _, _ in in_place] == [layer_cache] * 2 * config.n_layers


def test_end_of_text_and_stop_callbacks_end_rows(tiny):
  config, params = tiny
  greedy = decode.Decoder(config, params, _sampling()).generate(PROMPTS)
  eos = greedy[0][3]  # the 4th token of row 0 becomes end-of-text
  cut = decode.Decoder(config, params, _sampling(eos_id=eos)).generate(PROMPTS)
  for full, got in zip(greedy, cut):
    assert got == (full[: full.index(eos)] if eos in full else full)
  # Stop checks run between chunks of 5 tokens: row 1 ends after its first chunk.
  stopped = decode.Decoder(config, params, _sampling()).generate(
    PROMPTS, stop=lambda row, new: row == 1 and len(new) >= 4
  )
  assert stopped[1] == greedy[1][:5] and stopped[0] == greedy[0] and stopped[2] == greedy[2]


def test_sampling_filters(tiny):
  config, params = tiny
  greedy = decode.Decoder(config, params, _sampling()).generate(PROMPTS)
  for one_token in (dict(top_k=1), dict(top_p=1e-6)):
    sampled = decode.Decoder(config, params, _sampling(temperature=1.0, **one_token))
    assert sampled.generate(PROMPTS) == greedy
  hot = decode.Decoder(config, params, _sampling(temperature=1.5, seed=3))
  a, b = hot.generate(PROMPTS), hot.generate(PROMPTS)
  assert a == b and a != greedy  # seeded, and really sampling
  assert hot.generate(PROMPTS, rng=jax.random.key(4)) != a

  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 4000))
  keys = jax.random.split(jax.random.key(0), 1)[0]

  def draws(**kw):
    knobs = decode.sampling_knobs(dataclasses.replace(_sampling(temperature=1.0), **kw))
    return np.bincount(np.asarray(decode.sample_logits(logits, keys, knobs)), minlength=4)

  assert draws(top_k=2)[2:].sum() == 0 and draws(top_k=2)[1] > 1000
  top_p = draws(top_p=0.7)  # 0.5 + 0.3 reaches 0.7: two tokens stay
  assert top_p[2:].sum() == 0 and top_p[1] > 1000
  assert draws()[3] > 50  # no filter: the 5% token appears


def test_rows_sample_their_own_way_whatever_shares_their_batch(tiny):
  config, params = tiny
  decoder = decode.Decoder(config, params, _sampling())
  greedy = decoder.generate(PROMPTS)
  rows = [
    decode.RowSampling(temperature=1.5, seed=3),
    decode.RowSampling(),
    decode.RowSampling(temperature=1.0, top_k=1, seed=9),
  ]
  batch = decoder.generate(PROMPTS, rows=rows)
  assert batch[0] != greedy[0] and batch[1:] == greedy[1:]
  # Alone (another prompt bucket, other rows) or at another index: the same tokens.
  assert decoder.generate(PROMPTS[:1], rows=rows[:1]) == batch[:1]
  assert decoder.generate(PROMPTS[::-1], rows=rows[::-1])[2] == batch[0]
  other_stream = dataclasses.replace(rows[0], stream=1)
  assert decoder.generate(PROMPTS[:1], rows=[other_stream]) != batch[:1]
  with pytest.raises(ValueError, match="one RowSampling per prompt"):
    decoder.generate(PROMPTS, rows=rows[:2])


def test_generate_text_cuts_at_stop_strings(tiny):
  config, params = tiny

  class Chars:
    """A toy vocabulary: one token per character (ids 3..)."""

    def encode(self, text):
      return [ord(c) - 29 for c in text]

    def decode(self, ids):
      return "".join(chr(i + 29) for i in ids if 3 <= i < 126 - 29)

  vocab, decoder = Chars(), decode.Decoder(config, params, _sampling())
  text = decode.generate_text(decoder, vocab, ["def f(x):"])[0]
  assert text == vocab.decode(decoder.generate([vocab.encode("def f(x):")])[0])
  stop = text[3:5]
  cut = decode.generate_text(decoder, vocab, ["def f(x):"], stop=[stop])[0]
  assert cut == decode.truncate(text, [stop]) and len(cut) <= 3 + text[3:].find(stop)


def test_generate_text_keeps_the_end_of_a_prompt_longer_than_the_context(tiny):
  import dataclasses

  config, params = tiny
  short = dataclasses.replace(config, max_len=64)  # rotary: the same params serve any max_len
  decoder = decode.Decoder(short, params, _sampling())  # room for 64 - NEW -> 48 prompt tokens
  assert decoder.max_prompt_len == 48

  class Chars:
    def encode(self, text):
      return [ord(c) - 29 for c in text]

    def decode(self, ids):
      return "".join(chr(i + 29) for i in ids if 3 <= i < 126 - 29)

  vocab = Chars()
  tail = "def f(x):\n  return x + 1\n\ndef g(y, z):\n  return "
  assert len(tail) == 48
  long_prompt = "# " + "a long preamble " * 20 + tail
  with pytest.raises(ValueError, match="max_len"):  # the raw ids do not fit
    decoder.generate([vocab.encode(long_prompt)])
  expected = vocab.decode(decoder.generate([vocab.encode(tail)])[0])
  assert decode.generate_text(decoder, vocab, [long_prompt]) == [expected]


def test_bad_requests_are_named(tiny):
  config, params = tiny
  with pytest.raises(ValueError, match="max_len"):
    decode.Decoder(config, params, _sampling(max_new_tokens=config.max_len)).generate([[1, 2]])
  with pytest.raises(ValueError, match="top_p"):
    decode.SamplingConfig(top_p=0.0)
  with pytest.raises(KeyError, match="did you mean 'temperature'"):
    decode.SamplingConfig.from_dict({"temprature": 1.0})
