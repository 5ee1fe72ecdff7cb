"""The whole recipe at the smallest size that still exercises every stage: a corpus of 40
standard-library files, a 1024-piece tokenizer, a few steps of pretraining and finetuning, and 4
problems of each benchmark. Minutes on a laptop CPU; CI runs the main job and the Colab notebook
with it. Its numbers mean nothing."""

from phi_jax import configs


def get_config():
  cfg = configs.get("tiny")
  cfg.model.vocab_size = 1024
  cfg.corpus.update(
    max_files=40,
    help_topics=False,
    num_shards=1,
    validation_fraction=0.2,
    annotate_fraction=1.0,
    quality_model_steps=3,
    tokenizer_max_documents=200,
  )
  cfg.train.update(steps=8, global_batch=8, seq_len=64, loss_chunk=8, log_every=2)
  cfg.optim.update(warmup_steps=2, decay_steps=8)
  cfg.finetune.update(steps=4, global_batch=8, warmup_steps=1)
  cfg.checkpoint.update(every_steps=4)
  cfg.eval.update(every_steps=4, loss_batches=1, max_problems=4)
  cfg.sampling.max_new_tokens = 48
  return cfg
