"""The one Dataset class every split is served by: stored uint8 images + labels + a tensor transform."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class LabelledImages(Dataset):
    """``(float32 CHW image, int label)`` pairs.

    ``images`` is any (N, 3, H, W) uint8 array-like: an in-memory array, or a memory-mapped
    ``decoded_cache.MappedImages``. It holds no lambdas or open handles, so it pickles for workers.
    """

    def __init__(self, images, labels: np.ndarray, transform, num_classes: int, batchable: bool = False):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, np.int64)
        self.transform = transform
        self.num_classes = num_classes
        self.batchable = batchable  # the transform is deterministic: it may run on a whole batch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self.images[index]))  # a private, writable copy
        return self.transform(image), int(self.labels[index])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once, for deterministic transforms (``batchable``): one stack and one
        normalisation per batch instead of one per image, so small images never starve training."""
        images = torch.from_numpy(np.stack([self.images[i] for i in indices]))
        return self.transform(images), torch.from_numpy(self.labels[np.asarray(indices)])
