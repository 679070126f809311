"""Interoperability with other code bases: importing checkpoints written by the authors' own code.

- safe_load: read a foreign checkpoint file without running code from it (`weights_only=True`).
- eao_layout: the released Everything-at-Once state_dict layout -> our names, shapes and config.
- import_eao: `mft-train import-eao`, which turns such a checkpoint into one of our run folders.
"""
