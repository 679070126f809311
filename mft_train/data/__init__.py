"""Data: from shard files on disk to the batch dict the models read.

- shards: which shards of a set are complete, its word2vec vocabulary, one sample decoded to arrays.
- clips: the paper's clip sampling (caption-anchored windows) as pure functions over those arrays.
- batch: the batch layout, and collate (clip arrays -> padded tensors with masks).
- stream: the pretraining loader (resampled, shuffled shards; exact replay from a step for resume).
- eval_sets: clip-level sets (YouCook2, MSR-VTT) -> batches of whole clips for evaluation and fine-tuning.
"""
