"""The released Everything-at-Once checkpoint layout (github.com/ninatu/everything_at_once) -> ours.

Why a table of our own: the authors' `EverythingAtOnceModel` and our `EverythingAtOnce` compute the
same function (docs/recipes.md section 5) with other parameter names and, for DAVEnet, another tensor
layout. Everything here works on names and shapes only, so the paper-sized model (689 M parameters)
is checked without allocating it. Their names -> ours:

  fusion.masking_token                               masking_token
  fusion.blocks.0.{norm1, attn.qkv, attn.proj}       fusion.{norm_attn, qkv, proj}
  fusion.blocks.0.{norm2, mlp.fc1, mlp.fc2}          fusion.{norm_mlp, mlp.0, mlp.2}
  {m}_norm_layer                                     token_norm.{m}
  {m}_token_proj.{fc, cg.fc}                         token_proj.{m}.{fc, gate}
  {m}_proj.{fc, cg.fc}                               heads.{m}.{fc, gate}
  davenet.conv1, davenet.bn1                         davenet.stem, davenet.stem_bn
  davenet.layer{L}.{j}.{conv1, bn1, conv2, bn2}      davenet.blocks.{k}.{conv1, bn1, conv2, bn2}
  davenet.layer{L}.{j}.downsample.{0, 1}             davenet.blocks.{k}.shortcut.{0, 1}
with m in text, video, audio and k the block's position in (L, j) order. Their block convolutions are
Conv2d on a height-1 map, (o, i, 1, 9) and (o, i, 1, 1); ours are Conv1d, (o, i, 9) and (o, i, 1): the
same numbers, reshaped. `fusion.norm.*` and `davenet.batchnorm1.*` exist in their state_dict but their
forward never uses them: they are dropped. Any other key (a second fusion block, positional
embeddings, a CLS token, shared projections) is an error that names it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from howto_prep.errors import UserError
from mft_train.models.davenet import DAVENET_PRESETS
from mft_train.models.inputs import MODALITIES

PAPER_HEADS = 64  # the paper's fusion block; used when their config does not say
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
UNUSED_PREFIXES = ("fusion.norm.", "davenet.batchnorm1.")  # in their state_dict, never used by their forward
DP_PREFIX = "module."  # torch.nn.DataParallel's wrapper


@dataclass(frozen=True)
class KeyMap:
    """One tensor: its name in their state_dict and in ours."""

    theirs: str
    ours: str


def strip_data_parallel(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Drop DataParallel's `module.` prefix from every key that has it; (state_dict, whether any had it)."""
    stripped = {key.removeprefix(DP_PREFIX): value for key, value in state_dict.items()}
    if len(stripped) != len(state_dict):
        raise UserError("the state_dict holds the same key with and without the `module.` prefix")
    return stripped, any(key.startswith(DP_PREFIX) for key in state_dict)


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise UserError(f"the checkpoint lacks {key}, which an Everything-at-Once state_dict has")
    return tuple(state_dict[key].shape)


def davenet_structure(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[int], list[int]]:
    """(stage widths, stage depths) of their ResDavenet, read from the layer{L}.{j}.conv1 shapes."""
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        match = re.match(r"davenet\.layer(\d+)\.(\d+)\.", key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    if not blocks:
        raise UserError("the checkpoint has no davenet.layer* keys, so it holds no DAVEnet audio encoder")
    layers = sorted(blocks)
    if layers != list(range(1, len(layers) + 1)):
        raise UserError(f"the DAVEnet stages are layer{', layer'.join(map(str, layers))}: a stage is missing")
    depths, widths = [], []
    for layer in layers:
        indices = sorted(blocks[layer])
        if indices != list(range(len(indices))):
            raise UserError(f"davenet.layer{layer} has blocks {indices}: a block is missing")
        depths.append(len(indices))
        widths.append(_shape(state_dict, f"davenet.layer{layer}.0.conv1.weight")[0])
    stem_width = _shape(state_dict, "davenet.conv1.weight")[0]
    if stem_width != widths[0]:
        raise UserError(f"davenet.conv1.weight has {stem_width} output channels but davenet.layer1 has {widths[0]}; "
                        "our DAVEnet needs the stem and the first stage equally wide")
    return widths, depths


def their_heads(their_config: Mapping | None) -> int | None:
    """fusion_params.num_heads of their JSON config (arch.args.fusion_params), if it says."""
    try:
        heads = their_config["arch"]["args"]["fusion_params"]["num_heads"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return int(heads) if isinstance(heads, (int, float)) and not isinstance(heads, bool) else None


def their_arch_type(their_config: Mapping | None) -> str | None:
    """arch.type of their JSON config: the model class, which is all that names it when their trainer
    saved `arch` as the DataParallel wrapper's class name."""
    try:
        arch_type = their_config["arch"]["type"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return arch_type if isinstance(arch_type, str) and arch_type else None


def infer_model_config(state_dict: Mapping[str, torch.Tensor], their_config: Mapping | None = None,
                       heads: int | None = None) -> dict:
    """Our `model:` config section for their state_dict (module. prefix already stripped).

    Sizes come from tensor shapes; the number of attention heads, which no shape shows, from `heads`,
    else their config's fusion_params.num_heads, else the paper's 64. The paper's sizes give exactly
    the eao_howto100m preset's model section.
    """
    width = _shape(state_dict, "fusion.masking_token")[0]
    heads = heads or their_heads(their_config) or PAPER_HEADS
    if width % heads:
        raise UserError(f"the fusion width {width} is not divisible by {heads} attention heads; pass --heads N")
    hidden = _shape(state_dict, "fusion.blocks.0.mlp.fc1.weight")[0]
    embed_dim = _shape(state_dict, "text_proj.fc.weight")[0]
    widths, depths = davenet_structure(state_dict)
    model: dict = {"name": "eao", "width": width, "heads": heads, "mlp_ratio": hidden / width,
                   "qkv_bias": "fusion.blocks.0.attn.qkv.bias" in state_dict, "embed_dim": embed_dim}
    preset = next((name for name, (w, d) in DAVENET_PRESETS.items() if list(w) == widths and list(d) == depths), None)
    if preset is not None:
        model["davenet"] = preset
    else:
        model.update({"davenet": "v2", "davenet_widths": widths, "davenet_depths": depths})
    inputs = {"text_dim": _shape(state_dict, "text_token_proj.fc.weight")[1],
              "video_dim": _shape(state_dict, "video_token_proj.fc.weight")[1],
              "audio_mels": _shape(state_dict, "davenet.conv1.weight")[2]}
    defaults = {"text_dim": 300, "video_dim": 4096, "audio_mels": 40}
    model.update({key: value for key, value in inputs.items() if value != defaults[key]})
    model["audio_pad_value"] = 0.0
    return model


def key_table(depths: list[int], qkv_bias: bool) -> Iterator[KeyMap]:
    """Every tensor of their state_dict that we use, with our name (for a DAVEnet of these stages)."""
    yield KeyMap("fusion.masking_token", "masking_token")
    block = "fusion.blocks.0."
    for theirs, ours in (("norm1", "norm_attn"), ("attn.qkv", "qkv"), ("attn.proj", "proj"),
                         ("norm2", "norm_mlp"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
        for suffix in ("weight", "bias"):
            if ours == "qkv" and suffix == "bias" and not qkv_bias:
                continue
            yield KeyMap(f"{block}{theirs}.{suffix}", f"fusion.{ours}.{suffix}")
    for modality in MODALITIES:
        for suffix in ("weight", "bias"):
            yield KeyMap(f"{modality}_norm_layer.{suffix}", f"token_norm.{modality}.{suffix}")
            for theirs, ours in ((f"{modality}_token_proj", f"token_proj.{modality}"), (f"{modality}_proj", f"heads.{modality}")):
                yield KeyMap(f"{theirs}.fc.{suffix}", f"{ours}.fc.{suffix}")
                yield KeyMap(f"{theirs}.cg.fc.{suffix}", f"{ours}.gate.{suffix}")
    yield KeyMap("davenet.conv1.weight", "davenet.stem.weight")
    for suffix in BN_SUFFIXES:
        yield KeyMap(f"davenet.bn1.{suffix}", f"davenet.stem_bn.{suffix}")
    index = 0
    for layer, depth in enumerate(depths, start=1):
        for j in range(depth):
            theirs, ours = f"davenet.layer{layer}.{j}.", f"davenet.blocks.{index}."
            yield KeyMap(f"{theirs}conv1.weight", f"{ours}conv1.weight")
            yield KeyMap(f"{theirs}conv2.weight", f"{ours}conv2.weight")
            for bn in ("bn1", "bn2"):
                for suffix in BN_SUFFIXES:
                    yield KeyMap(f"{theirs}{bn}.{suffix}", f"{ours}{bn}.{suffix}")
            if j == 0:  # stride 2: their _make_layer adds a downsample, our block a shortcut
                yield KeyMap(f"{theirs}downsample.0.weight", f"{ours}shortcut.0.weight")
                for suffix in BN_SUFFIXES:
                    yield KeyMap(f"{theirs}downsample.1.{suffix}", f"{ours}shortcut.1.{suffix}")
            index += 1


def _unknown_key_error(key: str) -> UserError:
    if re.match(r"fusion\.blocks\.[1-9]\d*\.", key):
        return UserError(f"the checkpoint's fusion transformer has more than one block ({key}); "
                         "our Everything-at-Once has one shared block (fusion depth 1)")
    return UserError(f"unknown key {key} in the checkpoint: not part of the Everything-at-Once model we import "
                     "(depth-1 fusion, gated projections per modality, no positional embeddings or CLS token)")


def check_their_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[list[KeyMap], list[str]]:
    """(the key table, the unused keys) if `state_dict` (no `module.` prefix) has exactly the keys of an
    Everything-at-Once model; else a UserError naming the first unknown or missing key. Names only: this
    tells an EAO state_dict when nothing else names the class (a DataParallel whose config does not)."""
    _, depths = davenet_structure(state_dict)
    table = list(key_table(depths, "fusion.blocks.0.attn.qkv.bias" in state_dict))
    known = {entry.theirs for entry in table}
    for key in state_dict:
        if key not in known and not key.startswith(UNUSED_PREFIXES):
            raise _unknown_key_error(key)
    for entry in table:
        if entry.theirs not in state_dict:
            raise UserError(f"the checkpoint lacks {entry.theirs} (our {entry.ours})")
    return table, sorted(key for key in state_dict if key.startswith(UNUSED_PREFIXES))


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size | tuple]
                       ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Their state_dict (no `module.` prefix) -> ours, checked against our model's `expected` shapes.

    Returns (our state_dict with float tensors as float32, the unused keys dropped). Every key is
    accounted for: unknown, missing and mis-shaped keys are UserErrors naming their key.
    """
    table, dropped = check_their_keys(state_dict)
    converted: dict[str, torch.Tensor] = {}
    for entry in table:
        if entry.ours not in expected:
            raise UserError(f"internal: our model has no {entry.ours} for {entry.theirs}")
        tensor = state_dict[entry.theirs]
        want = tuple(expected[entry.ours])
        if tuple(tensor.shape) != want:
            if tensor.dim() == 4 and len(want) == 3 and tensor.shape[2] == 1 and \
                    (tensor.shape[0], tensor.shape[1], tensor.shape[3]) == want:
                tensor = tensor.squeeze(2)  # their height-1 Conv2d kernel -> our Conv1d kernel
            else:
                raise UserError(f"{entry.theirs} has shape {tuple(tensor.shape)} but our {entry.ours} needs {want}")
        converted[entry.ours] = tensor.float().contiguous() if tensor.is_floating_point() else tensor.clone()
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise UserError(f"internal: no checkpoint key maps to our {missing[0]}")
    return converted, dropped
