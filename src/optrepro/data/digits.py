"""scikit-learn's bundled handwritten digits (1,797 real 8x8 images, UCI): a vision task with no download.

A fixed stratified split (450 test images, ``random_state=0``) gives 1,347 train / 450 test.
Pixel values 0..16 are scaled to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

N_TEST = 450
SPLIT_SEED = 0


def load_digits_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 (N, 1, 8, 8) in [0, 1] and labels int64 (N,) of the fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=N_TEST, random_state=SPLIT_SEED, stratify=y)
    x, y = (x_train, y_train) if train else (x_test, y_test)
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1), torch.from_numpy(np.ascontiguousarray(y))


__all__ = ["load_digits_split"]
