"""torchvision.transforms as Qwen-VL-Chat's visual.py uses it (see the package docstring)."""
import enum

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    BICUBIC = "bicubic"
    BILINEAR = "bilinear"


class Compose:
    def __init__(self, ts):
        self.ts = ts

    def __call__(self, x):
        for t in self.ts:
            x = t(x)
        return x


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR):
        self.size = size
        self.interp = Image.BICUBIC if interpolation == InterpolationMode.BICUBIC else Image.BILINEAR

    def __call__(self, img):
        h, w = self.size
        return img.resize((w, h), self.interp)


class ToTensor:
    def __call__(self, img):
        a = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1).contiguous()


class Normalize:
    def __init__(self, mean, std):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, t):
        return (t - self.mean) / self.std
