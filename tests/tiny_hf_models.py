"""Tiny randomly initialised transformers segmentation models, saved with their image
processor config into a folder (``save_pretrained``), for the adapter tests.  Nothing is
downloaded: the configs are built here."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: tests never reach the hub

import torch  # noqa: E402

from gan_monitor.segmenters.ade20k import ADE20K_NAMES  # noqa: E402


def ade_id2label() -> dict[int, str]:
    """The ADE20K-150 labels, spelled as hub checkpoints do in places (synonyms, a trailing space)."""
    names = list(ADE20K_NAMES)
    names[6], names[7], names[8] = "road, route", "bed ", "windowpane, window"
    return dict(enumerate(names))


def _save_processor(folder: Path, size: dict, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> None:
    try:
        from transformers import SegformerImageProcessorPil as Processor  # transformers >= 5 without torchvision
    except ImportError:
        from transformers import SegformerImageProcessor as Processor
    Processor(size=size, image_mean=list(mean), image_std=list(std), do_reduce_labels=True).save_pretrained(folder)


def make_segformer(folder: Path, id2label: dict[int, str], size: int = 64) -> Path:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                          num_attention_heads=[1, 1], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=16,
                          id2label=id2label, label2id={v: k for k, v in id2label.items()})
    SegformerForSemanticSegmentation(cfg).eval().save_pretrained(folder)
    _save_processor(folder, {"height": size, "width": size})
    return folder


def make_upernet(folder: Path, id2label: dict[int, str], shortest_edge: int = 48) -> Path:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(1)
    backbone = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=16, use_auxiliary_head=False,
                        pool_scales=[1, 2], id2label=id2label, label2id={v: k for k, v in id2label.items()})
    UperNetForSemanticSegmentation(cfg).eval().save_pretrained(folder)
    _save_processor(folder, {"shortest_edge": shortest_edge}, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return folder
