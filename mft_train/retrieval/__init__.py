"""Using a trained model: embed a video collection in windows, index it, search it by text.

- windows: where a video's windows lie and the model inputs of one window (no text).
- fingerprint: cheap "is this the same file" checks for checkpoints and vocabularies.
- index_store: the index folder on disk (manifest, one part per shard, the vector-search indexes).
- vectors: building and querying the faiss indexes (exact inner product, or IVF for large sets).
- embed: `mft-train embed`, resumable per shard.
- query: a text query -> word vectors (the shards' tokenisation rule and vocabulary) -> embedding.
- search: `mft-train search` (table, JSON), html: the results page with keyframe thumbnails.
- stored_index: an index on an s3:// / gs:// URL (published from a work folder, index.json last; read
  through a cached copy, only when complete).
- synthetic_check: precision@k of a search against the synthetic corpus's ground truth (the demo).
"""
