"""The data half of phi-1: corpus building, tokenizer, and seqio tasks for pretraining/finetuning."""
