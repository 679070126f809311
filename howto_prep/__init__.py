"""howto_prep: HowTo100M data engineering (download, decode, features, WebDataset shards)."""

__version__ = "0.1.0"
