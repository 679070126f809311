"""mft_train: multimodal fusion transformer (Everything at Once) and MCN training on howto_prep shards."""

__version__ = "0.1.0"
