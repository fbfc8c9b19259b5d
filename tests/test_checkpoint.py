
import pytest
import torch
from helpers import seed_preprocessing

from foodnet.errors import CheckpointError
from foodnet.models.checkpoint import load_model, read_checkpoint
from foodnet.models.transfer import create_model
from foodnet.training.module import FoodClassifier


@pytest.fixture
def checkpoint(tmp_path):
    """A real checkpoint written by a Lightning Trainer."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    net = create_model("resnet18", num_classes=3, weights=None)
    module = FoodClassifier(net, class_names=["a", "b", "c"],
                            preprocessing=seed_preprocessing(32))
    data = DataLoader(TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0] * 2)),
                      batch_size=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path, module


def test_load_model_restores_weights_and_metadata(checkpoint):
    path, module = checkpoint
    net, info = load_model(path)
    assert info.arch == "resnet18" and info.class_names == ["a", "b", "c"]
    assert info.preprocessing == seed_preprocessing(32)
    assert info.preprocessing.mean == (0.485, 0.456, 0.406)
    x = torch.randn(2, 3, 32, 32)
    module.eval()
    assert torch.allclose(net(x), module(x))


def test_pickled_payload_is_refused_and_never_runs(tmp_path, checkpoint):
    path, _ = checkpoint
    data = torch.load(path, weights_only=True)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data["hyper_parameters"]["evil"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(data, evil)
    with pytest.raises(CheckpointError, match=rf"{evil}: refused: the file holds pickled"):
        load_model(evil)
    assert not marker.exists()


def test_truncated_foreign_and_missing_files_name_the_file(tmp_path, checkpoint):
    path, _ = checkpoint
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=rf"{truncated}: not a readable checkpoint"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=rf"{foreign}: not a foodnet checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_a_checkpoint_without_its_preprocessing_record_is_refused(tmp_path, checkpoint):
    """Only image_size, mean and std (no `preprocessing`): what the network expects is unknown."""
    path, _ = checkpoint
    data = torch.load(path, weights_only=True)
    hp = data["hyper_parameters"]
    preprocessing = hp.pop("preprocessing")
    hp.update(image_size=preprocessing["image_size"], mean=preprocessing["mean"],
              std=preprocessing["std"])
    bare = tmp_path / "bare.ckpt"
    torch.save(data, bare)
    with pytest.raises(CheckpointError, match=rf"{bare}: records no preprocessing \(image size, "
                                              r"mean, std\), so what the network expects is "
                                              "unknown"):
        load_model(bare)
    load_model(path)  # the control: the same checkpoint with its record loads
