"""Where the train-time policies run fastest on this CPU: torchvision v1 on PIL images, v2 on PIL
images, or v2 on uint8 tensors (docs/training.md#augmentation-policies quotes the figures).

One thread, as in a DataLoader worker; random 500x375 photos to 224 px; the best of 3 passes.
    python benchmarks/augment_speed.py [--images 40]
"""

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import v2

MEAN, STD, SIZE = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 224


def v1_pil(extra):
    return T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), *extra, T.ToTensor(),
                      T.Normalize(MEAN, STD), T.RandomErasing(0.25)])


def v2_pil(extra):
    return v2.Compose([v2.RandomResizedCrop(SIZE), v2.RandomHorizontalFlip(), *extra,
                       v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD), v2.RandomErasing(0.25)])


def v2_tensor(extra):
    return v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(SIZE, antialias=True),
                       v2.RandomHorizontalFlip(), *extra, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(MEAN, STD), v2.RandomErasing(0.25)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8))
              for _ in range(args.images)]
    policies = {"light": ([], []), "trivial": ([T.TrivialAugmentWide()], [v2.TrivialAugmentWide()]),
                "randaugment": ([T.RandAugment()], [v2.RandAugment()])}
    for name, (old, new) in policies.items():
        for kind, transform in (("v1 PIL", v1_pil(old)), ("v2 PIL", v2_pil(new)),
                                ("v2 uint8 tensor", v2_tensor(new))):
            torch.manual_seed(0)
            for image in images[:5]:  # warm-up
                transform(image)
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for image in images:
                    transform(image)
                best = min(best, (time.perf_counter() - start) / len(images))
            print(f"{name:12s} {kind:16s} {best * 1e3:6.2f} ms/image")


if __name__ == "__main__":
    main()
