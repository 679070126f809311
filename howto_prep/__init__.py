"""howto_prep: HowTo100M data engineering (download, decode, features, WebDataset shards).

One subpackage per job, each with a docstring naming its modules:
    download/   ids or URLs -> validated videos + manifest.sqlite (`howto-prep download`)
    extract/    videos + captions -> shard sets, video- or clip-level (`howto-prep extract`)
    features/   the feature recipes: ResNet-152, 3D ResNeXt-101, log-mel, word2vec tokens
    synthetic/  the synthetic corpus and the loopback mirror (`howto-prep synth`, `howto-prep mirror`)
Shared by them: schema (the shard format's names and constants), shards (reading and writing shard
sets), decode (one decode pass per video), errors (UserError and the one FailureKind vocabulary),
files (atomic writes, file digests), cluster (Ray start-up and bounded task maps); the CLI is cli,
status and doctor.
"""

__version__ = "0.1.0"
