"""``xaudit audit``: a user's own model and images (bring your own model).

The model is defined in this file and named by path (``tests/test_audit.py:make_net``), as a user names
a module of theirs; the data are PNGs written here.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import xaudit
from xaudit.core.errors import ConfigError
from xaudit.run.store import Store
from xaudit.world.folder import FolderWorld
from xaudit.zoo import user

HERE = Path(__file__).resolve()
FAST = {c: {"n_boot": 200, "figure_images": 1} for c in ("cascading_randomization", "independent_randomization",
                                                          "random_logit", "ood_shift", "localization")}


# ------------------------------------------------------------------------------ the user's models
class Net(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.relu1(self.conv1(x)))
        return self.fc(self.flat(self.gap(self.relu2(self.conv2(x)))))


def make_net():
    torch.manual_seed(0)
    return Net()


class Flat(nn.Module):
    """Returns one number per image: not [N, classes] logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, x):
        return self.conv(x).mean((1, 2, 3))


def make_flat():
    return Flat()


class Picky(Net):
    """Raises on a (nearly) white image."""

    def forward(self, x):
        if bool((x.flatten(1).mean(1) > 0.95).any()):
            raise ValueError("cannot handle white images")
        return super().forward(x)


def make_picky():
    torch.manual_seed(0)
    return Picky()


def make_downloader():
    socket.create_connection(("download.pytorch.org", 443), timeout=1)     # what a pretrained=True factory does
    return Net()


class Block(nn.Module):
    """torchvision's BasicBlock: one ReLU module called twice, the residual added in forward."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, separate_act: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)          # as timm and torchvision's zero_init_residual do
        self.act2 = nn.ReLU() if separate_act else None
        self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                     if stride != 1 or c_in != c_out else None)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.down is None else self.down(x))
        return self.act2(out) if self.act2 is not None else self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self, separate_act: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(8, 8, separate_act=separate_act), Block(8, 8, separate_act=separate_act))
        self.layer2 = nn.Sequential(Block(8, 16, 2, separate_act), Block(16, 16, separate_act=separate_act))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -------------------------------------------------------------------------------------- the data
def write_images(root: Path, per_class: int = 4, classes=("cat", "dog", "owl"), size=(40, 48), corrupt: bool = True):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    if corrupt:
        full = (root / classes[1] / "0.png").read_bytes()
        (root / classes[1] / "truncated.png").write_bytes(full[: len(full) // 2])
    return root


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / "data")


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "net.safetensors"
    save_file(make_net().state_dict(), str(path))
    return path


def model_ref(name: str = "make_net") -> str:
    return f"{HERE}:{name}"


# ---------------------------------------------------------------------------------------- tests
def test_end_to_end_user_module(tmp_path, data, weights):
    out = tmp_path / "run"
    res = xaudit.audit(model_ref(), data, weights=weights, size=32, methods="saliency,grad_cam", out=out,
                       params=FAST, workers=1)
    a = res.audit
    assert res.summary.failed == 0 and res.summary.done == 8          # 4 checks x 2 methods
    # the corrupt file is skipped, counted and named; the 12 others are used with their class labels
    assert a["data"]["images"] == 12 and a["data"]["skipped"][0][0] == "dog/truncated.png"
    assert a["data"]["class_names"] == ["cat", "dog", "owl"]
    # what was inferred: top-level parameterized children reversed; the conv's ReLU
    assert a["blocks"] == ["fc", "conv2", "conv1"] and a["blocks_inferred"]
    assert a["cam_layer"] == "relu2" and a["cam_layer_inferred"]
    # the accuracy is the model's own, on the images as xaudit read them
    w = FolderWorld(str(data), size=32, limit=64)
    net = make_net()
    with torch.no_grad():
        acc = float((net(w.sample(range(12)).images).argmax(1) == w.labels(range(12))).double().mean())
    assert a["accuracy"] == pytest.approx(acc)
    with Store.open(out, readonly=True) as store:
        rows = store.rows()
    casc = [r for r in rows if r["check"] == "cascading_randomization" and r["series"] == "stage"]
    assert {r["block"] for r in casc} == {"original", "model.fc", "model.conv2", "model.conv1"}
    verdicts = [r for r in rows if r["check"] == "random_logit" and r["series"] == "verdict"]
    assert verdicts and all("no retrain reference" in r["rule"] for r in verdicts)
    assert not [r for r in rows if r.get("series") == "retrain_reference"]
    html = (out / "report.html").read_text()
    assert "Your model and data" in html and "dog/truncated.png" in html and "No retrain reference" in html
    assert "model.fc → model.conv2 → model.conv1" in html or "fc → conv2 → conv1" in html
    # the same call resumes: nothing runs again
    again = xaudit.audit(model_ref(), data, weights=weights, size=32, methods="saliency,grad_cam", out=out,
                         params=FAST, workers=1)
    assert again.summary.ran == 0 and again.summary.skipped == 8


def test_changed_weights_make_new_cells(tmp_path, data, weights):
    kw = dict(size=32, methods="saliency", checks="random_logit", params=FAST, workers=1, out=tmp_path / "run")
    first = xaudit.audit(model_ref(), data, weights=weights, **kw)
    torch.manual_seed(5)
    save_file(Net().state_dict(), str(weights))
    second = xaudit.audit(model_ref(), data, weights=weights, **kw)
    assert first.summary.ran == 1 and second.summary.ran == 1     # other weights: other cells, not resumed


def test_malicious_pickle_is_refused_without_running(tmp_path, data):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))      # unpickling would create the marker file

    evil = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Payload()}, evil)
    assert not marker.exists()
    with pytest.raises(ConfigError) as e:
        xaudit.audit(model_ref(), data, weights=evil, size=32, out=tmp_path / "run")
    msg = str(e.value)
    assert "weights_only" in msg and "safetensors" in msg and "never unpickles" in msg
    assert not marker.exists()                     # the payload did not run
    assert not (tmp_path / "run").exists()         # refused before any work


def test_pt_state_dict_loads_and_wrong_weights_say_which_keys(tmp_path, data):
    pt = tmp_path / "net.pt"
    torch.save(make_net().state_dict(), pt)
    spec = user.make_spec(model_ref(), weights=pt)
    m = user.build_module(spec)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), make_net().state_dict().values()))
    other = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 3, 3)}, str(other))
    with pytest.raises(ConfigError, match="missing keys"):
        user.build_module(user.make_spec(model_ref(), weights=other))


def test_factory_that_downloads_is_stopped(tmp_path, data):
    with pytest.raises(ConfigError, match="--weights") as e:
        xaudit.audit(model_ref("make_downloader"), data, size=32, out=tmp_path / "run")
    assert "tried to reach the network" in str(e.value)


def test_output_shape_and_model_errors(tmp_path, data):
    with pytest.raises(ConfigError, match=r"returned shape \[12\]"):
        xaudit.audit(model_ref("make_flat"), data, size=32, out=tmp_path / "a")
    white = tmp_path / "white"
    write_images(white, per_class=2, corrupt=False)
    Image.fromarray(np.full((40, 48, 3), 255, np.uint8)).save(white / "dog" / "zz-white.png")
    with pytest.raises(user.ModelError, match="dog/zz-white.png: ValueError: cannot handle white images"):
        xaudit.audit(model_ref("make_picky"), white, size=32, out=tmp_path / "b")


def test_one_image_runs_with_a_warning(tmp_path):
    one = tmp_path / "one"
    write_images(one, per_class=1, classes=("cat",), corrupt=False)
    with pytest.warns(UserWarning, match="meaningless"):
        res = xaudit.audit(model_ref(), one, size=32, methods="saliency", checks="random_logit", params=FAST,
                           workers=1, out=tmp_path / "run")
    assert res.summary.done == 1 and "meaningless" in (tmp_path / "run" / "report.html").read_text()


def test_block_and_cam_inference_on_a_small_resnet():
    net = SmallResNet().eval()
    assert user.infer_blocks(net) == ["fc", "layer2", "layer1", "bn1", "conv1"]
    x = torch.rand(2, 3, 16, 16)
    # the block reuses its ReLU: the block's output (the rectified sum) is hooked, not bn2 (>= 0 only
    # because it is zero-initialized) and not the twice-called ReLU
    assert user.infer_cam_layer(net, x) == "layer2.1"
    assert user.infer_cam_layer(SmallResNet(separate_act=True).eval(), x) == "layer2.1.act2"
    # a wrapper with one parameterized child is descended into
    wrapped = nn.Sequential()
    wrapped.add_module("backbone", net)
    assert user.infer_blocks(wrapped) == ["backbone.fc", "backbone.layer2", "backbone.layer1", "backbone.bn1",
                                          "backbone.conv1"]
    # Grad-CAM at the inferred layer equals Captum's LayerGradCam there
    from captum.attr import LayerGradCam

    from xaudit import explain

    audited = user.Audited(net, None, user.infer_blocks(net), "layer2.1").eval()
    target = torch.tensor([1, 2])
    ours = explain.get("grad_cam")(audited, x, target)
    ref = LayerGradCam(audited, audited.model.layer2[1]).attribute(x, target=target, relu_attributions=True)
    ref = torch.nn.functional.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours.sum(1, keepdim=True) if ours.shape[1] != 1 else ours, ref, rtol=1e-4, atol=1e-6)


def test_blocks_and_cam_layer_overrides(tmp_path, data):
    res = xaudit.audit(model_ref(), data, size=32, methods="grad_cam", checks="cascading_randomization",
                       blocks="fc,conv2", cam_layer="conv2", params=FAST, workers=1, out=tmp_path / "run")
    assert res.audit["blocks"] == ["fc", "conv2"] and not res.audit["blocks_inferred"]
    assert res.audit["cam_layer"] == "conv2" and not res.audit["cam_layer_inferred"]
    with pytest.raises(ConfigError, match="has no module 'layer9'"):
        xaudit.audit(model_ref(), data, size=32, blocks="fc,layer9", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="holds no parameters"):
        xaudit.audit(model_ref(), data, size=32, blocks="fc,relu1", out=tmp_path / "y")


def test_flat_folder_with_labels_csv(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(3)
    names = []
    for i in range(5):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(flat / f"img{i}.png")
        names.append(f"img{i}.png")
    (flat / "notes.txt").write_text("not an image")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{n},{i % 3}\n" for i, n in enumerate(names)))
    w = FolderWorld(str(flat), size=32, labels=str(csv))
    assert w.labels(range(5)).tolist() == [0, 1, 2, 0, 1] and w.ignored == ["notes.txt"]
    # names instead of indices: numbered in sorted order
    csv.write_text("file,class\n" + "".join(f"{n},{['owl', 'cat'][i % 2]}\n" for i, n in enumerate(names)))
    w = FolderWorld(str(flat), size=32, labels=str(csv))
    assert w.class_names == ("cat", "owl") and w.labels(range(5)).tolist() == [1, 0, 1, 0, 1]
    # no labels: accuracy is absent; a CSV whose paths match nothing is an error naming the fix
    res = xaudit.audit(model_ref(), flat, size=32, methods="saliency", checks="random_logit", params=FAST,
                       workers=1, out=tmp_path / "run")
    assert res.audit["accuracy"] is None and not res.audit["data"]["labels"]
    csv.write_text("path,label\nelsewhere/a.png,1\n")
    with pytest.raises(ConfigError, match="labels none of the images"):
        FolderWorld(str(flat), size=32, labels=str(csv))


def test_integer_class_folders_are_class_indices(tmp_path):
    root = write_images(tmp_path / "d", per_class=1, classes=("2", "0"), corrupt=False)
    w = FolderWorld(str(root), size=32)
    assert w.paths == ["0/0.png", "2/0.png"] and w.labels(range(2)).tolist() == [0, 2]


def test_center_crop_matches_a_hand_computation(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    a = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)
    Image.fromarray(a).save(root / "x.png")
    w = FolderWorld(str(root), size=16, crop_pct=0.5, interpolation="nearest")
    # shorter side 40 -> 16 / 0.5 = 32, longer 60 -> 48; the central 16 x 16 of that
    big = np.asarray(Image.fromarray(a).resize((48, 32), Image.Resampling.NEAREST), dtype=np.float32) / 255
    want = torch.from_numpy(big[8:24, 16:32].copy()).permute(2, 0, 1)
    torch.testing.assert_close(w.sample([0]).images[0], want)


def test_masks_are_read_resized_and_checked(tmp_path, data):
    masks = tmp_path / "masks"
    (masks / "cat").mkdir(parents=True)
    m = np.zeros((40, 48), np.uint8)
    m[10:30, 12:36] = 255
    Image.fromarray(m).save(masks / "cat" / "0.png")
    w = FolderWorld(str(data), size=40, masks=str(masks), resize="squash", interpolation="nearest")
    got = w.sample(range(len(w)))
    want = np.asarray(Image.fromarray(m).resize((40, 40), Image.Resampling.NEAREST)) > 0
    assert got.object_mask[0].numpy().tolist() == want.tolist()
    assert not got.object_mask[1:].any()           # the images without a mask file
    res = xaudit.audit(model_ref(), data, masks=masks, size=32, methods="saliency", checks="localization",
                       params=FAST, workers=1, out=tmp_path / "run")
    assert res.summary.done == 1
    with Store.open(tmp_path / "run", readonly=True) as store:
        no_mask = [r for r in store.rows() if r["metric"] == "no_mask"]
    assert no_mask and no_mask[0]["value"] == 11
    # a mask of another size than its image
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(masks / "cat" / "1.png")
    with pytest.raises(ConfigError, match=r"is 20x20 px but its image .*cat/1.png is 48x40 px"):
        xaudit.audit(model_ref(), data, masks=masks, size=32, out=tmp_path / "run2")
    with pytest.raises(ConfigError, match="--masks"):
        xaudit.audit(model_ref(), data, size=32, checks="localization", out=tmp_path / "run3")


def test_checks_that_need_retraining_are_refused(tmp_path, data):
    with pytest.raises(ConfigError, match="data_randomization.*needs models xaudit trains"):
        xaudit.audit(model_ref(), data, size=32, checks="data_randomization", out=tmp_path / "run")


def test_changed_images_refuse_a_planned_world(tmp_path, data):
    w = FolderWorld(str(data), size=32)
    cfg = w.config()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(data / "cat" / "0.png")
    from xaudit.world import folder

    folder._MEMO.clear()
    with pytest.raises(ConfigError, match="changed since this run was planned"):
        FolderWorld(**{k: v for k, v in cfg.items() if k != "world"})


def test_in_memory_model_and_tensors(tmp_path):
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    res = xaudit.audit(net, x, labels=torch.tensor([0, 1, 2, 0, 1, 2]), methods="saliency",
                       checks="cascading_randomization,random_logit", params=FAST, out=tmp_path / "run")
    assert res.summary.done == 2 and res.audit["data"]["images"] == 6 and res.audit["accuracy"] is not None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())     # the user's object untouched
    again = xaudit.audit(net, x, labels=torch.tensor([0, 1, 2, 0, 1, 2]), methods="saliency",
                         checks="cascading_randomization,random_logit", params=FAST, out=tmp_path / "run")
    assert again.summary.ran == 0
    with pytest.raises(ConfigError, match="workers"):
        xaudit.audit(net, x, workers=2, out=tmp_path / "run2")


def test_cli_audit(tmp_path, data, weights):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "xaudit.cli", "audit", "--model", model_ref(), "--data", str(data),
           "--weights", str(weights), "--size", "32", "--methods", "saliency", "--checks", "random_logit",
           "--out", str(tmp_path / "run"), "--workers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cascading order (inferred): fc, conv2, conv1" in r.stdout and "skipped dog/truncated.png" in r.stderr
    bad = subprocess.run(cmd[:-4] + ["--cam-layer", "nope", "--out", str(tmp_path / "x")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "error: --cam-layer" in bad.stderr and "has no module 'nope'" in bad.stderr


EXTRAS = Path(__file__).resolve().parents[1] / ".venv-extras" / "bin" / "xaudit"


@pytest.mark.skipif(not EXTRAS.exists(), reason="the timm/torchvision extras venv (.venv-extras, made by `make "
                                                "install` where torch 2.14.1 + torchvision install) is absent")
@pytest.mark.parametrize("model,cam", [("timm:resnet18", "layer4.1.act2"), ("torchvision:resnet18", "layer4.1")])
def test_timm_and_torchvision_models(tmp_path, model, cam):
    data = write_images(tmp_path / "d", per_class=2, classes=("a", "b"), corrupt=False)
    r = subprocess.run([str(EXTRAS), "audit", "--model", model, "--data", str(data), "--size", "64", "--methods",
                        "saliency,grad_cam", "--checks", "cascading_randomization", "--out", str(tmp_path / "run"),
                        "--workers", "1"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cascading order (inferred): fc, layer4, layer3, layer2, layer1, bn1, conv1" in r.stdout
    assert f"Grad-CAM layer (inferred): {cam}" in r.stdout
    with Store.open(tmp_path / "run", readonly=True) as store:
        rows = store.rows()
    assert {r["block"] for r in rows if r["series"] == "stage"} >= {"model.layer4", "model.conv1"}


def test_no_network_guard_restores_sockets():
    saved = socket.create_connection
    with user.no_network() as attempts:
        with pytest.raises(OSError):
            socket.create_connection(("example.org", 80))
    assert attempts and socket.create_connection is saved


def test_normalize_parsing():
    assert user.parse_normalize("imagenet")["mean"] == [0.485, 0.456, 0.406]
    assert user.parse_normalize("0.5,0.5,0.5/0.25,0.25,0.25") == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert user.parse_normalize("none") is None
    with pytest.raises(ConfigError, match="--normalize"):
        user.parse_normalize("0.5/0")


def test_bad_data_options_name_the_flag(tmp_path, data):
    with pytest.raises(ConfigError, match="--n-images"):
        xaudit.audit(model_ref(), data, size=32, n_images=0, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="--data: no such folder"):
        xaudit.audit(model_ref(), tmp_path / "nowhere", size=32, out=tmp_path / "b")
    with pytest.raises(ConfigError, match="--transform"):
        xaudit.audit(model_ref(), data, size=32, resize="stretch", out=tmp_path / "c")
