"""The batch of a step does not depend on how it is read: threads or reader processes."""

import numpy as np
import pytest

from phi_jax import configs, input_pipeline


@pytest.mark.slow
def test_batches_are_the_steps_rows_with_threads_and_processes(tiny_corpus):
  cfg = configs.get("tiny")
  cfg.data.update(source="seqio", dir=str(tiny_corpus), mixture="phi1_pretrain")
  seq_len, global_batch, rows, start = 64, 8, slice(2, 6), 1_000
  source = input_pipeline.MixtureRows(cfg.data, seq_len, 0, "train")
  expected = [
    np.stack([source[(start + s) * global_batch + g]["inputs"] for g in range(2, 6)])
    for s in range(3)
  ]
  for threads, processes in ((1, 0), (3, 0), (1, 2)):
    cfg.data.update(read_threads=threads, read_processes=processes)
    reader = input_pipeline.read_rows(cfg.data, source, rows, global_batch, start)
    got = [next(reader)["inputs"] for _ in range(3)]
    reader.close()
    for step, (a, b) in enumerate(zip(got, expected)):
      assert np.array_equal(a, b), f"threads={threads} processes={processes}: step {step}"
