"""The train and eval presets: the seed's transforms, scaled by image_size."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The seed resizes to 300 before a 256 crop for training; keep that ratio at any size.
TRAIN_RESIZE_RATIO = 300 / 256


def train_transform(image_size: int = 256, augment: bool = True,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The seed's training augmentation; augment=False gives the eval preset."""
    if not augment:
        return eval_transform(image_size, mean, std)
    resize = round(image_size * TRAIN_RESIZE_RATIO)
    return T.Compose([
        T.Resize([resize, resize]),
        T.RandomRotation(45),
        T.CenterCrop(image_size),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomVerticalFlip(p=0.5),
        T.ColorJitter(brightness=0.2, contrast=0.1, saturation=0.1, hue=0.1),
        T.RandomGrayscale(p=0.1),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def eval_transform(image_size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    """The seed's deterministic 'valid' preset: a square resize, no crop."""
    return T.Compose([
        T.Resize([image_size, image_size]),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
