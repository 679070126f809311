"""Evaluation: text-video-audio retrieval on clip-level shard sets (docs/recipes.md section 7).

- encode: every clip through the model once (windows of a clip averaged).
- scoring: similarity matrices of the nine combinations -> metrics and ranks.
- metrics: R@K, MedR, MeanR with ties averaged (`retrieval_metrics`, the public function).
- report: the printed table, the JSON and the recall-at-K PNG (plots).
- evaluate: `mft-train evaluate` and `evaluate_checkpoint`, which fine-tuning calls after every epoch.
- stored_report: `evaluate --json s3://...`: the report's files uploaded whole, the .json last.
"""
