"""Train-time augmentation policies: the `augment` config group, the seed's exact transforms."""

import pickle

import numpy as np
import pytest
import torch
from helpers import compose_train, seed_preprocessing
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from PIL import Image
from torchvision import transforms as T

from foodnet.data import FoodDataModule
from foodnet.data.augment import NoAugment, SeedAugment
from foodnet.data.images import load_rgb


def _image(seed: int = 0, size=(40, 56)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _seed_pipeline(preprocessing):
    """The train transform as Preprocessing.train_transform wrote it before augmentation had its
    own module: the reference that SeedAugment must reproduce tensor for tensor."""
    size = preprocessing.image_size
    mode = T.InterpolationMode(preprocessing.interpolation)
    resize = round(size * 300 / 256)
    return T.Compose([
        T.Resize([resize, resize] if preprocessing.crop_mode == "squash" else resize,
                 interpolation=mode),
        T.RandomRotation(45),
        T.CenterCrop(size),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomVerticalFlip(p=0.5),
        T.ColorJitter(brightness=0.2, contrast=0.1, saturation=0.1, hue=0.1),
        T.RandomGrayscale(p=0.1),
        T.ToTensor(),
        T.Normalize(list(preprocessing.mean), list(preprocessing.std)),
    ])


def _seeded(transform, image, seed):
    torch.manual_seed(seed)
    return transform(image)


@pytest.mark.parametrize("crop_mode", ["squash", "center"])
def test_seed_policy_gives_the_seed_pipelines_tensors(crop_mode):
    preprocessing = seed_preprocessing(32).override(crop_mode=crop_mode)
    policy, reference = SeedAugment().transform(preprocessing), _seed_pipeline(preprocessing)
    image = _image()
    for seed in range(8):
        assert torch.equal(_seeded(policy, image, seed), _seeded(reference, image, seed)), seed
    # Control: the augmentation changes the image, and another torch seed draws another one.
    augmented = _seeded(policy, image, 0)
    assert augmented.shape == (3, 32, 32)
    assert not torch.equal(augmented, preprocessing.eval_transform()(image))
    assert not torch.equal(augmented, _seeded(policy, image, 1))


def test_seed_policy_scales_with_the_input_size():
    transforms = SeedAugment().transform(seed_preprocessing(256)).transforms
    assert list(transforms[0].size) == [300, 300] and list(transforms[2].size) == [256, 256]
    assert _seeded(SeedAugment().transform(seed_preprocessing(64)), _image(), 0).shape == \
        (3, 64, 64)


def test_no_augment_is_the_eval_transform():
    preprocessing = seed_preprocessing(32)
    image = _image()
    assert torch.equal(NoAugment().transform(preprocessing)(image),
                       preprocessing.eval_transform()(image))
    assert repr(NoAugment().transform(preprocessing)) == repr(preprocessing.eval_transform())


def test_policies_record_plain_values_and_pickle():
    assert NoAugment().to_dict() == {"name": "none"}
    assert SeedAugment().to_dict() == {
        "name": "seed", "resize_ratio": 300 / 256, "rotation": 45, "hflip": 0.5, "vflip": 0.5,
        "brightness": 0.2, "contrast": 0.1, "saturation": 0.1, "hue": 0.1, "grayscale": 0.1}
    assert SeedAugment(rotation=10).to_dict()["rotation"] == 10
    # Loader workers receive the policy's transform by pickling: it must draw the same there.
    for policy in (NoAugment(), SeedAugment()):
        assert pickle.loads(pickle.dumps(policy)) == policy
        transform = policy.transform(seed_preprocessing(32))
        copy = pickle.loads(pickle.dumps(transform))
        assert torch.equal(_seeded(copy, _image(), 3), _seeded(transform, _image(), 3))


def test_augment_group_composes_from_the_real_config(tiny_data):
    assert instantiate(compose_train().augment) == SeedAugment()  # the default: the seed's
    policy = instantiate(compose_train(["augment=none"]).augment)
    assert policy == NoAugment()
    datamodule = FoodDataModule(tiny_data["train"], tiny_data["val"], classes=tiny_data["classes"],
                                preprocessing=seed_preprocessing(32), augment=policy,
                                num_workers=0)
    datamodule.setup("fit")
    train = datamodule.datasets["train"]
    eval_transform = seed_preprocessing(32).eval_transform()
    for index in (0, 1, len(train) - 1):
        image, _ = train[index]
        assert torch.equal(image, eval_transform(load_rgb(train.samples[index].path)))
    with pytest.raises(MissingConfigException, match="augment/maybe"):
        compose_train(["augment=maybe"])
