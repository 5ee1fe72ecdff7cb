"""TPU ahead-of-time compilation of the train step (phi_jax.aot): libtpu, no TPU.

libtpu comes with the `test` extra; without it these tests fail rather than skip.
"""

import jax
import jax.numpy as jnp
import pytest

from phi_jax import aot, attention, configs, hlo_flops, metrics, sharding, train_step

GiB = 2**30


def _tiny(global_batch, micro_batch, seq_len=128, remat="full"):
  cfg = configs.get("tiny")
  cfg.model.update(dtype="bfloat16", remat=remat)
  # loss_chunk=0: tiny's CPU-sized loss chunks recompute the lm_head (more FLOPs than counted)
  cfg.train.update(
    global_batch=global_batch, micro_batch=micro_batch, seq_len=seq_len, loss_chunk=0
  )
  return cfg


def test_tiny_compiles_for_v5e_with_sane_memory_and_flops():
  # 4 chips, 4 accumulation steps of 4 sequences, 2 scanned layers, full remat.
  r = aot.compile_report(_tiny(16, 4), "v5e:2x2")
  assert r["num_devices"] == 4 and r["device_kind"].startswith("TPU v5")
  assert r["micro_batches"] == 4
  assert r["fits"] and "error" not in r
  for key in ("argument_bytes", "output_bytes", "temp_bytes", "generated_code_bytes"):
    assert r[key] > 0, key
  assert 0 < r["total_bytes"] < r["hbm_bytes"] == 16 * GiB
  assert r["total_bytes"] < 1 * GiB  # a 2.5M-parameter model
  # Every loop's trip count was found: micro-batches (4), layers forward and backward (2).
  assert None not in r["loop_trip_counts"]
  assert {4, 2} <= set(r["loop_trip_counts"])
  # Compiled matmul FLOPs vs the analytic 6N + attention count: full remat adds a forward of
  # the layers (~+10% here, the lm_head dominates tiny), non-causal attention a little more.
  assert 1.0 < r["flops_ratio"] < 1.3, r["flops_ratio"]
  # XLA's cost_analysis counts each loop body once; the HLO walk does the same when asked,
  # up to elementwise FLOPs, which it leaves out.
  once, cost = r["hlo_matmul_flops_loops_once"], r["cost_analysis_flops"]
  assert 0.8 * cost < once <= cost
  assert cost < 0.5 * r["compiled_flops"]
  # The compiler's step-time estimate: every loop counted, never faster than the chips' peak.
  assert r["estimated_cycles"] > 3 * r["estimated_cycles_loops_once"]
  peak_seconds = r["compiled_flops"] / (r["num_devices"] * 197e12)
  assert peak_seconds < r["estimated_step_s"] and 0 < r["estimated_mfu"] < 1
  assert r["estimated_kernel_s"] == 0  # xla attention: no custom kernels
  tokens = 16 * 128
  assert r["estimated_tokens_per_s_per_chip"] == pytest.approx(tokens / r["estimated_step_s"] / 4)


@pytest.mark.parametrize("topology", ["v4:2x2x1", "v5e:2x2", "v5p:2x2x1"])
def test_estimated_cycles_of_a_large_matmul_come_near_the_chips_peak(topology):
  # A compute-bound 8192^3 bf16 matmul on one chip: its estimated cycles at CLOCK_HZ take a
  # little longer than the vendor's peak FLOP/s allows, never less (checks the clock table).
  device = aot.topology_devices(topology)[0]
  x = jax.ShapeDtypeStruct(
    (8192, 8192), jnp.bfloat16, sharding=jax.sharding.SingleDeviceSharding(device)
  )
  text = jax.jit(lambda a, b: a @ b).lower(x, x).compile().as_text()
  cycles, _, _ = hlo_flops.estimated_cycles(text)
  clock = aot.clock_hz(device.device_kind)
  ideal = 2 * 8192**3 / metrics.datasheet_peak_flops(device.device_kind)
  assert ideal < cycles / clock < 1.25 * ideal


def test_v4_is_one_megacore_device_per_chip():
  assert len(aot.topology_devices("v4:2x2x1")) == 4
  assert len(aot.topology_devices("v4:2x2x1", chip_config="default")) == 8


def test_step_that_cannot_fit_is_reported_not_raised():
  # 4096 x 512 tokens of fp32 logits over an 8192 vocab in one micro-batch: ~16 GiB per chip.
  r = aot.compile_report(_tiny(4096, 0, seq_len=512, remat="none"), "v5e:2x2")
  assert r["fits"] is False
  assert "RESOURCE_EXHAUSTED" in r["error"]
  assert r["compiler_hbm_limit_bytes"] <= 16 * GiB
  assert r.get("total_bytes", r.get("temp_bytes", 0)) > r["compiler_hbm_limit_bytes"]


def test_splash_kernel_flops_count_the_blocks_the_causal_mask_visits():
  # 1024 tokens in 512-token blocks: the causal mask visits 3 of the 4 blocks. Per visited block
  # and head the forward runs 2 matmuls (scores, output) and the fused backward 5.
  device = aot.topology_devices("v5e:2x2")[0]
  x = jax.ShapeDtypeStruct(
    (1, 1024, 2, 64), jnp.bfloat16, sharding=jax.sharding.SingleDeviceSharding(device)
  )
  forward = lambda q, k, v: attention.splash_attention(q, k, v).astype(jnp.float32).sum()
  count = attention.splash_kernel_flops(1024, 64)
  block_matmul = 2 * 512 * 512 * 64  # FLOPs of one [512, 64] x [64, 512] matmul
  for fn, matmuls in ((forward, 2), (jax.grad(forward, (0, 1, 2)), 2 + 5)):
    text = jax.jit(fn).lower(x, x, x).compile().as_text()
    assert hlo_flops.matmul_flops(text)[0] == 0  # the kernels are opaque to the HLO walk
    assert hlo_flops.matmul_flops(text, count)[0] == matmuls * 3 * 2 * block_matmul


def test_splash_step_compiles_with_fewer_flops_and_temporaries_than_xla():
  reports = {}
  for kernel in ("xla", "splash"):
    cfg = _tiny(16, 4, seq_len=1024, remat="none")
    cfg.model.attention = kernel
    reports[kernel] = aot.compile_report(cfg, "v5e:2x2")
  xla, splash = reports["xla"], reports["splash"]
  assert splash["fits"] and xla["fits"]
  # The score tensors are gone, and the causal mask skips a quarter of the blocks.
  assert splash["temp_bytes"] < 0.6 * xla["temp_bytes"]
  assert 1.0 < splash["flops_ratio"] < xla["flops_ratio"]
  # The kernels carry no cycle estimate: their FLOPs are timed at the chips' peak.
  assert splash["estimated_kernel_s"] > 0 == xla["estimated_kernel_s"]
  assert splash["estimated_step_s"] < xla["estimated_step_s"]


def _trials(fit):
  return [(t["micro_batch"], t["remat"], t["fits"]) for t in fit["record"]["trials"]]


def test_fit_picks_the_largest_micro_batch_then_the_cheapest_remat():
  # 64 x 1024 tokens on 4 v5e chips with 4.3% of each chip's memory as the budget (0.68 GiB):
  # 64 sequences at once do not fit even with full remat, 32 do; at 32, no remat keeps too
  # much, `dots` fits.
  cfg = _tiny(64, "auto", seq_len=1024, remat="auto")
  cfg.train.fit_margin = 0.957
  fit = aot.fit(cfg, "v5e:2x2")
  assert _trials(fit) == [
    (64, "full", False),
    (32, "full", True),
    (32, "none", False),
    (32, "dots", True),
  ]
  record = fit["record"]
  assert record["budget_bytes"] == int((1 - 0.957) * aot.COMPILER_HBM_LIMIT_BYTES["v5e"])
  assert record["total_bytes"] == fit["report"]["total_bytes"] <= record["budget_bytes"]
  for trial in record["trials"]:
    assert trial["fits"] == (trial["bytes"] <= record["budget_bytes"])
  assert (fit["config"].train.micro_batch, fit["config"].model.remat) == (32, "dots")
  assert (record["micro_batch"], record["remat"]) == (32, "dots")
  assert fit["report"]["micro_batches"] == 2


def test_fit_keeps_an_explicit_setting_and_says_when_nothing_fits():
  cfg = _tiny(64, 8, seq_len=1024, remat="auto")
  cfg.train.fit_margin = 0.97
  fit = aot.fit(cfg, "v5e:2x2")
  assert _trials(fit) == [(8, "none", True)]  # the micro-batch as given; the cheapest remat
  with pytest.raises(ValueError, match="phi_jax.aot.fit"):  # "auto" is never compiled as such
    train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
  cfg = _tiny(8, 4, seq_len=1024, remat="full")  # settings given: fit checks that they fit
  cfg.train.fit_margin = 0.999
  with pytest.raises(aot.MemoryFitError, match="even train.micro_batch=4 with model.remat=full"):
    aot.fit(cfg, "v5e:2x2")


def test_the_fastest_rule_takes_the_setting_the_compiler_estimates_fastest(monkeypatch):
  # The rule's choices over stand-in compiler reports (the compiles themselves are tested
  # above): a micro-batch of m sequences needs m x (bytes per sequence) of the budget, and a
  # step takes (seconds per accumulation step) x the accumulation steps.
  per_sequence = {"none": 8, "dots": 4, "dots_no_batch": 2, "full": 1}  # % of the budget
  per_step = {"none": 1.0, "dots": 1.5, "dots_no_batch": 2.1, "full": 2.6}

  def report(cfg, topology, chip_config=None):
    del topology, chip_config
    m, remat = cfg.train.micro_batch, cfg.model.remat
    budget = (1 - cfg.train.fit_margin) * aot.COMPILER_HBM_LIMIT_BYTES["v5e"]
    return dict(
      compiled=True,
      micro_batch=m,
      remat=remat,
      total_bytes=m * per_sequence[remat] / 100 * budget,
      estimated_step_s=per_step[remat] * 64 / m,
      compile_s=0.0,
    )

  monkeypatch.setattr(aot, "compile_report", report)
  cfg = _tiny(64, "auto", remat="auto")
  cfg.train.fit_rule = "fastest"
  fit = aot.fit(cfg, "v5e:2x2")
  # The largest that fits under each policy: 8, 16, 32 and 64 sequences; per step 8, 6, 4.2, 2.6 s.
  assert [(m, remat) for m, remat, fits in _trials(fit) if fits] == [
    (8, "none"),
    (16, "dots"),
    (32, "dots_no_batch"),
    (64, "full"),
  ]
  assert (fit["record"]["micro_batch"], fit["record"]["remat"]) == (64, "full")
  per_step["full"] = 4.5  # now 4.5 s: dots_no_batch's 4.2 s wins
  assert aot.fit(cfg, "v5e:2x2")["record"]["remat"] == "dots_no_batch"
  cfg.train.fit_rule = "largest"
  assert aot.fit(cfg, "v5e:2x2")["record"]["remat"] == "full"  # 64 at once with full only
  cfg.train.fit_rule = "fastest"
  with pytest.raises(aot.MemoryFitError, match="needs the TPU compiler's step-time estimate"):
    aot.fit(cfg)  # the CPU devices of this process: no estimate
