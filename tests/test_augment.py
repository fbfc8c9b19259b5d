"""Train-time augmentation policies: the `augment` config group, the seed's exact transforms."""

import pickle

import numpy as np
import pytest
import torch
from helpers import compose_train, seed_preprocessing
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate
from PIL import Image
from torchvision import transforms as T

from foodnet.data import FoodDataModule
from foodnet.data.augment import Augmentation, NoAugment, SeedAugment
from foodnet.data.images import load_rgb
from foodnet.errors import ConfigError, find_user_error
from foodnet.train import train

NEW_POLICIES = ("light", "trivial", "randaugment")


def _policy(name: str, *overrides: str) -> Augmentation:
    """The policy as the real config builds it (conf/augment/<name>.yaml); a user error raised
    while building it comes out as itself, as the entry points report it."""
    try:
        return instantiate(compose_train([f"augment={name}", *overrides]).augment)
    except InstantiationException as err:
        raise find_user_error(err) or err from None


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
    off = {"erasing": 0.0, "mix": None, "mix_alpha": 1.0}
    assert NoAugment().to_dict() == {"name": "none", **off}
    assert SeedAugment().to_dict() == {
        "name": "seed", **off, "resize_ratio": 300 / 256, "rotation": 45, "hflip": 0.5,
        "vflip": 0.5, "brightness": 0.2, "contrast": 0.1, "saturation": 0.1, "hue": 0.1,
        "grayscale": 0.1}
    assert SeedAugment(rotation=10).to_dict()["rotation"] == 10
    # Loader workers receive the policy's transform by pickling: it must draw the same there.
    for policy in (NoAugment(), SeedAugment(), *(_policy(name) for name in NEW_POLICIES)):
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


@pytest.mark.parametrize("name", ["seed", *NEW_POLICIES])
def test_each_policy_changes_the_images(name):
    preprocessing = seed_preprocessing(32)
    transform = _policy(name).transform(preprocessing)
    image = _image(size=(48, 64))
    plain = preprocessing.eval_transform()(image)
    augmented = [_seeded(transform, image, seed) for seed in range(4)]
    assert all(view.shape == plain.shape == (3, 32, 32) for view in augmented)
    assert all(view.dtype == torch.float32 for view in augmented)
    assert all(not torch.equal(view, plain) for view in augmented)
    assert not torch.equal(augmented[0], augmented[1])  # another draw, another image
    assert torch.equal(augmented[0], _seeded(transform, image, 0))  # the same seed, the same one
    # The control: `none` is the eval transform, whatever the seed.
    none = _policy("none").transform(preprocessing)
    assert all(torch.equal(_seeded(none, image, seed), plain) for seed in range(4))


@pytest.mark.parametrize("name", ["seed", "light"])
def test_random_erasing_is_an_option_of_every_policy(name):
    preprocessing = seed_preprocessing(32)
    image = _image(size=(48, 64))
    plain = _seeded(_policy(name).transform(preprocessing), image, 5)
    erased = _seeded(_policy(name, "augment.erasing=1.0").transform(preprocessing), image, 5)
    # Erasing runs last: the same draw up to it, then a rectangle set to 0 (its fill value).
    changed = (erased != plain).any(dim=0)
    assert changed.any()
    assert (erased[:, changed] == 0).all()
    assert torch.equal(erased[:, ~changed], plain[:, ~changed])
    with pytest.raises(ConfigError, match="augment.erasing=0.5 with augment=none"):
        _policy("none", "augment.erasing=0.5")
    with pytest.raises(ConfigError, match=r"augment.erasing=1.5 must be a probability"):
        _policy(name, "augment.erasing=1.5")


def _first_train_batch(tiny_data, policy):
    datamodule = FoodDataModule(tiny_data["train"], tiny_data["val"], classes=tiny_data["classes"],
                                preprocessing=seed_preprocessing(32), augment=policy,
                                batch_size=16, num_workers=0, seed=3)
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_batch_mixing_gives_soft_targets(tiny_data, kind):
    images, targets = _first_train_batch(tiny_data, _policy("none", f"augment.mix={kind}"))
    plain_images, labels = _first_train_batch(tiny_data, _policy("none"))
    # The control: without mixing, integer labels and the eval transform's images.
    assert labels.dtype == torch.long and labels.shape == (16,)
    assert targets.dtype == torch.float32 and targets.shape == (16, 20)
    assert torch.allclose(targets.sum(dim=1), torch.ones(16))
    # Each image is mixed with the next one of the batch (torchvision rolls it by one), with
    # one ratio per batch: lam x its own label + (1 - lam) x the other's.
    rolled = labels.roll(1)
    differ = (labels != rolled).nonzero()[0, 0]
    lam = targets[differ, labels[differ]]
    assert 0 < lam < 1
    one_hot = torch.nn.functional.one_hot
    assert torch.allclose(targets, lam * one_hot(labels, 20) + (1 - lam) * one_hot(rolled, 20))
    assert not torch.equal(images, plain_images)
    # Drawn from the samples' seeds: the same batch again, exactly.
    again_images, again_targets = _first_train_batch(tiny_data,
                                                     _policy("none", f"augment.mix={kind}"))
    assert torch.equal(again_images, images) and torch.equal(again_targets, targets)


def test_training_accepts_mixed_batches(tiny_data, tmp_path):
    from helpers import tiny_overrides

    metrics = train(compose_train(tiny_overrides(tiny_data, **{
        "augment": "light", "augment.mix": "cutmix", "augment.erasing": 0.25,
        "trainer.max_epochs": 2}), run_dir=tmp_path))
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    hparams = torch.load(metrics["last_checkpoint"], weights_only=True)["hyper_parameters"]
    assert hparams["augment"]["name"] == "light"
    assert (hparams["augment"]["mix"], hparams["augment"]["erasing"]) == ("cutmix", 0.25)
    with pytest.raises(ConfigError, match="augment.mix=blend must be one of mixup, cutmix, both"):
        _policy("seed", "augment.mix=blend")
