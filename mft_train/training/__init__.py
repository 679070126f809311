"""Training: one loop for pretraining and fine-tuning, and everything it touches.

- trainer: the Trainer (model, optimiser, schedule, objective, steps, checkpoints, resume); what it
  trains on comes from a batch source, what happens between epochs from optional hooks.
- pretrain: `mft-train pretrain` (the shard stream as batch source).
- finetune: `mft-train finetune` (whole clips as batch source, per-epoch evaluation and best.pt as hooks).
- device: where a run executes, autocast, moving batches.  distributed: torchrun, gathers, SyncBatchNorm.
- optim: Adam and the two learning-rate schedules.  checkpoints: checkpoint files and RNG state.
- run_folder: config.yaml, metrics.jsonl and TensorBoard of a run.
- preemption: SIGTERM / Ctrl-C become a stop after the current step, with a checkpoint (exit 130).
"""
