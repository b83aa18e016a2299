"""Image preparation, split in two so that JPEG decoding happens once per image, not once per epoch.

1. ``Decoder``: file -> uint8 (3, S, S) at the deterministic pre-augmentation size S
   (VTAB: resize to image_size; FGVC: resize to 256). Its output is what ``decoded_cache`` stores.
2. ``tensor_transform``: cached uint8 tensor -> normalised float32 tensor, with the random crop and
   flip of the training recipe (FGVC) or the centre crop of evaluation. The normalisation is the
   backbone's (``bench.backbones.Backbone.mean`` / ``std``: 0.5 for the ImageNet-21k ViTs and the
   demo, ImageNet's for DINOv2, MAE and Swin, OpenAI's for CLIP); it runs after the cache, so the
   decoded images are shared by every backbone and the cache's key does not depend on it.

Which recipe applies comes from the suite's ``[transform]`` table (``train``/``eval`` kinds, optional
``resize_size`` and ``interpolation``), overridable per task by a ``transform`` table in the task.

FGVC follows RLRR, the reference paper's code (``zstarN70/RLRR``, ``RLRRDatasets/fgvc_tranforms.py``):
``Resize((256, 256))`` (the whole image squashed to 256x256, aspect ratio not kept; PIL bilinear), then
``RandomCrop(224)`` + ``RandomHorizontalFlip(0.5)`` for training or ``CenterCrop(224)`` for evaluation,
then mean = std = (0.5, 0.5, 0.5). Ours does exactly that, in two steps: ``Decoder`` does the 256x256
bilinear PIL resize (the same call torchvision makes on a PIL image: identical pixels), and
``tensor_transform`` crops, flips, scales to [0, 1] and normalises. VPT (``KMnP/vpt``,
``src/data/transforms.py``) differs: ``Resize(256)`` of the SHORT side (aspect kept, so the crop drops
part of the long side) and ImageNet mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225). We follow
RLRR because its numbers are the reference (``bench/catalog_data/reference``) and because 0.5 is the
normalisation the ImageNet-21k ViT weights were trained with (the design's protocol, VTAB alike);
other backbones get the normalisation their own weights were trained with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..catalog import Suite, Task
from ..errors import UserError

MEAN = STD = (0.5, 0.5, 0.5)  # ImageNet-21k ViT normalisation: the default (reference backbone, demo)
KINDS = ("none", "resize", "resize_crop_flip", "resize_center_crop")
CROPPING = ("resize_crop_flip", "resize_center_crop")
# VTAB's recipe resizes bicubic (design); RLRR's (and VPT's) FGVC transforms use torchvision's default, bilinear.
DEFAULT_INTERPOLATION = {"none": "bicubic", "resize": "bicubic",
                         "resize_crop_flip": "bilinear", "resize_center_crop": "bilinear"}
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class ImagePlan:
    """How one split's images are prepared: decoded to ``cache_size`` squares, then cropped to ``image_size``."""
    kind: str
    image_size: int
    cache_size: int
    interpolation: str
    flip: bool = False  # a random horizontal flip after the kind's steps (a paper recipe's, e.g. RLRR simple_aug)

    @property
    def deterministic(self) -> bool:
        """No random crop or flip: the transform may run on a whole batch at once."""
        return self.kind != "resize_crop_flip" and not self.flip


def image_plan(suite: Suite, task: Task, train: bool, flip: bool = False) -> ImagePlan:
    """The recipe for ``task`` in training (``train=True``) or evaluation mode; ``flip`` adds a
    random horizontal flip to training (RLRR's ``simple_aug``: RandomHorizontalFlip after the resize,
    ``RLRRDatasets/VTABDataLoader.py``); a kind that flips already is left as it is."""
    settings = {**suite.transform, **task.options.get("transform", {})}
    kind = settings.get("train" if train else "eval", "none")
    if kind not in KINDS:
        raise UserError(f"suite {suite.name}: unknown transform {kind!r}; known: {', '.join(KINDS)}")
    image_size = int(suite.protocol["image_size"])
    cache_size = int(settings.get("resize_size", round(image_size * 256 / 224))) if kind in CROPPING else image_size
    interpolation = settings.get("interpolation", DEFAULT_INTERPOLATION[kind])
    if interpolation not in RESAMPLING:
        raise UserError(f"suite {suite.name}: unknown interpolation {interpolation!r}; known: {', '.join(RESAMPLING)}")
    return ImagePlan(kind, image_size, cache_size, interpolation, flip=train and flip and kind != "resize_crop_flip")


def tensor_transform(plan: ImagePlan, mean=MEAN, std=STD) -> v2.Compose:
    """uint8 (3, S, S) tensor -> float32 (3, image_size, image_size), normalised by ``mean`` / ``std``
    (per channel, on [0, 1] values); random for training kinds."""
    steps = {
        "resize_crop_flip": [v2.RandomCrop(plan.image_size), v2.RandomHorizontalFlip()],
        "resize_center_crop": [v2.CenterCrop(plan.image_size)],
    }.get(plan.kind, [])
    if plan.flip:
        steps = [*steps, v2.RandomHorizontalFlip()]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class Decoder:
    """Image file -> RGB uint8 array (3, size, size). A plain class so DataLoader workers can pickle it."""

    def __init__(self, size: int, interpolation: str):
        self.size = size
        self.interpolation = interpolation

    def __call__(self, path) -> np.ndarray:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((self.size, self.size), RESAMPLING[self.interpolation])
        return np.asarray(image).transpose(2, 0, 1)

    def __repr__(self) -> str:  # part of the decoded-cache key
        return f"Decoder(size={self.size}, interpolation={self.interpolation!r})"
