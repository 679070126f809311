"""mft_train: Everything-at-Once (multimodal fusion transformer) and MCN training on howto_prep shards.

Where things live (each subpackage's docstring says more):
- cli: the `mft-train` command (pretrain, finetune, evaluate, import-eao, embed, search).
- config: the typed run configuration (model, data, loss, train sections); presets: YAML presets
  in configs/ and `--set` overrides; settings: mapping -> checked frozen dataclass, for every section.
- data/: shard files -> clips -> the batch dict models read (pretraining stream, evaluation clip sets).
- models/: Everything-at-Once and MCN, and the batch layout they check.
- losses/: the combinatorial (EAO) and MCN losses, MCN's K-means, the objective a step calls.
- training/: the one Trainer loop, pretraining and fine-tuning around it, devices, DDP, checkpoints.
- evaluation/: retrieval metrics, scoring, reports, `mft-train evaluate` (under the clip set's protocol).
- interop/: the authors' released EAO checkpoints read without pickle and renamed to ours (`import-eao`).
- retrieval/: windowed embeddings of whole videos, the faiss index and text search (`embed`, `search`).
"""

__version__ = "0.1.0"
