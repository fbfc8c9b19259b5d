import numpy as np
import pytest
import torch
from helpers import seed_preprocessing
from PIL import Image

from foodnet.data import FoodDataModule, ManifestDataset
from foodnet.data.augment import NoAugment, SeedAugment
from foodnet.data.manifest import read_manifest
from foodnet.errors import ImageLoadError, ManifestError


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB", "CMYK", "LA", "1"])
def test_every_mode_becomes_3_channel(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png" if mode != "CMYK" else tmp_path / "img.jpg"
    Image.new(mode, (20, 10)).save(path)
    (tmp_path / "m.txt").write_text(f"{path.name} 0\n")
    dataset = ManifestDataset(read_manifest(tmp_path / "m.txt"),
                              seed_preprocessing(16).eval_transform())
    image, label = dataset[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_decode_error_names_manifest_line_and_image(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "m.txt").write_text("# header\nbad.jpg 1\n")
    dataset = ManifestDataset(read_manifest(tmp_path / "m.txt"),
                              seed_preprocessing(16).eval_transform())
    with pytest.raises(ImageLoadError, match=rf"{tmp_path / 'm.txt'}:2: .*bad.jpg"):
        dataset[0]


def test_image_size_scales_the_seed_presets():
    image = Image.fromarray(np.zeros((50, 80, 3), dtype=np.uint8))
    assert SeedAugment().transform(seed_preprocessing(64))(image).shape == (3, 64, 64)
    assert seed_preprocessing(64).eval_transform()(image).shape == (3, 64, 64)
    resize = SeedAugment().transform(seed_preprocessing(256)).transforms[0]
    assert list(resize.size) == [300, 300]
    assert [type(t).__name__ for t in NoAugment().transform(seed_preprocessing(64)).transforms] \
        == ["Resize", "ToTensor", "Normalize"]


def test_no_augment_is_deterministic():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    t = NoAugment().transform(seed_preprocessing(32))
    assert torch.equal(t(image), t(image))


def test_datamodule_checks_classes_against_num_classes(tiny_data):
    with pytest.raises(ManifestError, match="lists 20 classes but model.num_classes=5"):
        FoodDataModule(tiny_data["train"], tiny_data["val"], classes=tiny_data["classes"],
                       num_classes=5)


def test_datamodule_rejects_labels_beyond_num_classes(tiny_data):
    dm = FoodDataModule(tiny_data["train"], tiny_data["val"], num_classes=10, num_workers=0)
    with pytest.raises(ManifestError, match=r"train.txt:\d+: label 1\d is out of range for 10"):
        dm.setup("fit")


def test_datamodule_loaders(tiny_data):
    dm = FoodDataModule(tiny_data["train"], tiny_data["val"], tiny_data["test"],
                        classes=tiny_data["classes"], num_classes=20,
                        preprocessing=seed_preprocessing(32), batch_size=8, num_workers=0)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 80 and len(dm.datasets["val"]) == 40
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="data.test_manifest"):
        FoodDataModule(tiny_data["train"], tiny_data["val"], num_workers=0).test_dataloader()
