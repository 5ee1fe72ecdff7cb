"""phi_jax: phi-1 ("Textbooks Are All You Need") in JAX/Flax.

Where things are (docs/architecture.md has the layers):
  model.py           the architecture, a pure forward function over a params pytree
  train_step.py      the jitted, sharded train step; train.py the loop, resume and CLI
  input_pipeline.py  the trainer's batches: seqio tasks (tasks.py) built into random-access
                     records (records.py), mixed (mixture.py) and packed (packing.py) by step
  configs.py         every config field with its default; the files under configs/ override them
  pipeline.py        the main job: corpus -> pretrain -> finetune -> evaluate -> report
"""
