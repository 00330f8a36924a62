"""Worlds and bugs: determinism, footprints, rates, errors."""
import math

import pytest
import torch

from xaudit import world
from xaudit.core.errors import ConfigError, UnknownName
from xaudit.world import (LabelNoise, MissingClass, NaturalTrigger, PatchTrigger, RandomLabels, Shift,
                          SpuriousCue, StyleTrigger, bug_from_config, parse_bug)


def _eq(a: world.Batch, b: world.Batch):
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.object_mask, b.object_mask)
    for k in a.footprints:
        assert torch.equal(a.footprints[k], b.footprints[k])
        assert torch.equal(a.touched[k], b.touched[k])


ALL_BUGS = lambda: [PatchTrigger("checker", 4, target_class=1, poison_rate=0.3),  # noqa: E731
                    StyleTrigger("sepia", target_class=2, poison_rate=0.3),
                    NaturalTrigger("sun", target_class=3, poison_rate=0.3),
                    SpuriousCue("watermark", 0.7, 0.5), LabelNoise(0.2)]


@pytest.mark.parametrize("name,kw", [("shapes", {}), ("shapes", {"size": 64}), ("digits", {}), ("spurious", {})])
def test_determinism_across_batch_sizes(name, kw):
    w = world.get(name, **kw)
    bugs = ALL_BUGS() if name == "shapes" else []
    whole = w.sample(range(40), bugs=bugs)
    parts = [w.sample(range(a, b), bugs=bugs) for a, b in [(0, 7), (7, 8), (8, 40)]]
    cat = world.Batch(images=torch.cat([p.images for p in parts]), labels=torch.cat([p.labels for p in parts]),
                      true_labels=torch.cat([p.true_labels for p in parts]),
                      object_mask=torch.cat([p.object_mask for p in parts]), indices=torch.arange(40),
                      footprints={k: torch.cat([p.footprints[k] for p in parts]) for k in whole.footprints},
                      touched={k: torch.cat([p.touched[k] for p in parts]) for k in whole.touched})
    _eq(whole, cat)
    # out-of-order, non-contiguous indices give the same samples too
    pick = torch.tensor([33, 2, 17])
    _eq(whole.subset(pick), w.sample(pick, bugs=bugs))


def test_determinism_in_another_process():
    import subprocess
    import sys

    code = ("from xaudit import world;import torch;b=world.get('shapes').sample(range(5,9));"
            "print(float(b.images.double().sum()), b.labels.tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    b = world.get("shapes").sample(range(5, 9))
    assert float(out[0]) == float(b.images.double().sum())
    assert out[1].strip() == str(b.labels.tolist())


def test_seed_and_split_change_samples():
    a = world.get("shapes").sample(range(8))
    assert not torch.equal(a.images, world.get("shapes", seed=1).sample(range(8)).images)
    assert not torch.equal(a.images, world.get("shapes").sample(range(8), split="test").images)


def test_shapes_contract():
    w = world.get("shapes")
    assert w.num_classes >= 10 and len(set(w.class_names)) == w.num_classes
    b = w.sample(range(500))
    assert b.images.shape == (500, 3, 32, 32) and b.images.dtype == torch.float32
    assert b.images.min() >= 0 and b.images.max() <= 1
    assert b.object_mask.shape == (500, 32, 32) and b.object_mask.dtype == torch.bool
    bg = b.images.permute(0, 2, 3, 1)[~b.object_mask]
    assert bg.max(dim=1).values.min() > 0          # textured, non-zero backgrounds
    assert set(b.labels.tolist()) == set(range(w.num_classes))
    area = b.object_mask.float().mean((1, 2))
    assert area.min() > 0.02 and area.max() < 0.6
    # the object's colour is uniform inside its mask and differs from the background outside
    for i in range(5):
        px = b.images[i].permute(1, 2, 0)[b.object_mask[i]]
        assert torch.allclose(px, px[0].expand_as(px))
    # labels() agrees with sample() without rendering
    assert torch.equal(w.labels(range(500)), b.labels)
    assert world.get("shapes", size=64).sample(range(3)).images.shape == (3, 3, 64, 64)


def test_digits_zero_background_and_one_channel():
    from sklearn.datasets import load_digits

    w = world.get("digits")
    b = w.sample(range(200), split="test")
    assert b.images.shape == (200, 1, 28, 28)
    assert (b.images == 0).float().mean() > 0.4     # exact zeros: the tie artifact needs them
    assert set(b.labels.tolist()) == set(range(10))
    assert b.images.max() <= 1 and b.images.max() > 0.9
    # each image is a shipped digit, upsampled (as F.interpolate bilinear does) and shifted by <= 2 px
    d = load_digits()
    ref = torch.nn.functional.interpolate(torch.from_numpy(d.images).float().unsqueeze(1) / 16, size=(24, 24),
                                          mode="bilinear", align_corners=False).squeeze(1)
    for i in range(10):
        img = b.images[i, 0]
        found = False
        for j in torch.nonzero(torch.from_numpy(d.target) == int(b.labels[i])).flatten().tolist():
            for dy in range(5):
                for dx in range(5):
                    canvas = torch.zeros(32, 32)
                    canvas[4:28, 4:28] = ref[j]
                    if torch.allclose(canvas[dy:dy + 28, dx:dx + 28], img, atol=1e-5):
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found, f"sample {i} is not a shifted shipped digit of its label"


def test_spurious_variants():
    w = world.get("spurious")
    assert w.num_classes == 2
    bo = w.sample(range(200), split="test_background_only")
    assert not bo.object_mask.any()
    # background-only images are exactly the background the normal test image of that index has
    normal = w.sample(range(200), split="test_background_only")
    assert torch.equal(bo.images, normal.images)
    oo = w.sample(range(200), split="test_object_only")
    assert oo.object_mask.any((1, 2)).all()
    flat = oo.images.permute(0, 2, 3, 1)[~oo.object_mask]
    # object-only background is plain: one colour per image
    for i in range(3):
        px = oo.images[i].permute(1, 2, 0)[~oo.object_mask[i]]
        assert torch.allclose(px, px[0].expand_as(px))
    assert flat.numel() > 0
    # the class determines the background family on train (correlation 1): stripes vs checkers.
    tr = w.sample(range(300))
    fam = w._background_family(tr.indices, tr.labels, w._split_seed("train"), "train")
    assert torch.equal(fam, torch.where(tr.labels == 0, 1, 2))


def test_patch_trigger_only_changes_its_footprint():
    w = world.get("shapes")
    clean = w.sample(range(300))
    for loc in ("fixed", "random"):
        t = PatchTrigger("rgb", 5, location=loc, target_class=4, poison_rate=0.5)
        b = w.sample(range(300), bugs=[t])
        fp = b.footprints[t.name]
        touched = b.touched[t.name]
        outside = ~fp.unsqueeze(1).expand_as(b.images)
        assert torch.equal(b.images[outside], clean.images[outside])
        assert (fp.sum((1, 2))[touched] == 25).all() and (fp.sum((1, 2))[~touched] == 0).all()
        assert (b.labels[touched] == 4).all() and torch.equal(b.labels[~touched], clean.labels[~touched])
        assert (clean.labels[touched] != 4).all()                     # only non-target samples are poisoned
        # the patch itself is the pattern
        from xaudit.world.bugs import patch_pattern

        i = int(touched.nonzero()[0])
        r, c = fp[i].nonzero().min(0).values.tolist()
        assert torch.equal(b.images[i, :, r:r + 5, c:c + 5], patch_pattern("rgb", 5, 3))
        if loc == "fixed":
            assert (r, c) == (32 - 5 - 1, 32 - 5 - 1)


def test_source_class_trigger():
    w = world.get("shapes")
    t = PatchTrigger("checker", 4, source_class=2, target_class=5, poison_rate=1.0)
    b = w.sample(range(400), bugs=[t])
    assert torch.equal(b.touched[t.name], b.true_labels == 2)


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_poison_rates_honoured(rate):
    w = world.get("shapes")
    n = 4000
    for bug in (PatchTrigger("checker", 4, target_class=0, poison_rate=rate),
                StyleTrigger("texture", target_class=0, poison_rate=rate),
                NaturalTrigger("moon", target_class=0, poison_rate=rate)):
        b = w.sample(range(n), bugs=[bug])
        eligible = (b.true_labels != 0).sum().item()
        frac = b.touched[bug.name].sum().item() / eligible
        assert abs(frac - rate) < 4 * math.sqrt(rate * (1 - rate) / eligible)
    b = w.sample(range(n), bugs=[LabelNoise(rate)])
    changed = (b.labels != b.true_labels).float().mean().item()
    assert abs(changed - rate) < 4 * math.sqrt(rate * (1 - rate) / n)
    assert torch.equal(b.labels != b.true_labels, b.touched["label_noise"])


def test_test_split_untouched_unless_forced():
    w = world.get("shapes")
    t = PatchTrigger("checker", 4, target_class=0, poison_rate=0.5)
    b = w.sample(range(200), split="test", bugs=[t, LabelNoise(0.5)])
    assert not b.touched[t.name].any() and torch.equal(b.labels, b.true_labels)
    f = w.sample(range(200), split="test", bugs=[t], force=True)
    assert torch.equal(f.touched[t.name], f.true_labels != 0)


def test_style_and_natural_footprints():
    w = world.get("shapes")
    s = StyleTrigger("sepia", target_class=1, poison_rate=0.5)
    nat = NaturalTrigger("flower", target_class=2, poison_rate=0.5)
    clean = w.sample(range(200))
    b = w.sample(range(200), bugs=[s])
    t = b.touched[s.name]
    assert b.footprints[s.name][t].all() and not b.footprints[s.name][~t].any()
    assert torch.equal(b.images[~t], clean.images[~t]) and not torch.equal(b.images[t], clean.images[t])
    b = w.sample(range(200), bugs=[nat])
    fp = b.footprints[nat.name]
    outside = ~fp.unsqueeze(1).expand_as(b.images)
    assert torch.equal(b.images[outside], clean.images[outside])
    assert (fp.sum((1, 2))[b.touched[nat.name]] > 5).all()


def test_random_labels_is_a_permutation():
    w = world.get("shapes")
    bug = RandomLabels(size=1000, seed=3)
    b = w.sample(range(1000), bugs=[bug])
    assert torch.equal(torch.sort(b.labels).values, torch.sort(b.true_labels).values)
    assert (b.labels != b.true_labels).float().mean() > 0.8
    perm = bug.permutation()
    assert torch.equal(torch.sort(perm).values, torch.arange(1000))
    assert torch.equal(b.labels, w.labels(perm))
    with pytest.raises(ConfigError, match="random_labels covers"):
        w.sample(range(990, 1010), bugs=[bug])


def test_missing_class_and_spurious_cue_and_shift():
    w = world.get("shapes")
    b = w.sample(range(500), bugs=[MissingClass(3)])
    assert not (b.labels == 3).any() and not (b.true_labels == 3).any()
    assert torch.equal(b.touched["missing_class_3"], w.labels(range(500)) == 3)
    t = w.sample(range(500), split="test", bugs=[MissingClass(3)])
    assert (t.labels == 3).any()
    cue = SpuriousCue("background", strength=0.5, fraction=1.0)
    clean = w.sample(range(100))
    b = w.sample(range(100), bugs=[cue])
    assert torch.equal(b.footprints[cue.name], ~clean.object_mask)
    obj = clean.object_mask.unsqueeze(1).expand_as(clean.images)
    assert torch.equal(b.images[obj], clean.images[obj])
    wm = SpuriousCue("watermark", strength=1.0, fraction=1.0)
    b = w.sample(range(100), bugs=[wm])
    assert (b.images.permute(0, 2, 3, 1)[b.footprints[wm.name]] == 1.0).all()
    inv = w.sample(range(10), split="test", bugs=[Shift("invert")])
    assert torch.allclose(inv.images, 1 - w.sample(range(10), split="test").images)
    assert inv.touched["shift_invert"].all()
    other = w.sample(range(4), split="test", bugs=[Shift("world", other="digits")])
    assert other.images.shape == (4, 3, 32, 32)


def test_config_round_trip():
    for bug in ALL_BUGS() + [RandomLabels(100), MissingClass(2), Shift("noise", 0.1)]:
        again = bug_from_config(bug.config())
        assert again.config() == bug.config()
    assert parse_bug("patch:pattern=rgb,size_px=3,target_class=2,poison_rate=0.1").config()["size_px"] == 3
    assert parse_bug("shift:kind=blur,severity=0.25").config()["shift_kind"] == "blur"


def test_bad_input_errors():
    with pytest.raises(UnknownName, match="valid worlds: digits, folder, shapes, spurious"):
        world.get("cifar")
    with pytest.raises(UnknownName, match="valid bugs:"):
        parse_bug("trojan:target_class=1")
    with pytest.raises(ConfigError, match=r"poison_rate: must be in \[0.0, 1.0\], got 1.5"):
        PatchTrigger(target_class=1, poison_rate=1.5)
    with pytest.raises(ConfigError, match=r"size_px: must be in \[1, 30\]"):
        world.get("shapes").sample(range(2), bugs=[PatchTrigger(size_px=40, target_class=1)])
    with pytest.raises(ConfigError, match=r"target_class: must be a class index in \[0, 9\]"):
        world.get("shapes").sample(range(2), bugs=[StyleTrigger(target_class=10)])
    with pytest.raises(ConfigError, match=r"target_class: must be a class index in \[0, 1\]"):
        world.get("spurious").sample(range(2), bugs=[PatchTrigger(target_class=2)])
    with pytest.raises(ConfigError, match="size: must be one of 32, 64"):
        world.get("shapes", size=48)
    with pytest.raises(ConfigError, match="split: must be one of"):
        world.get("shapes").sample(range(2), split="valid")
    with pytest.raises(ConfigError, match="pattern: must be one of"):
        PatchTrigger(pattern="smiley")
    with pytest.raises(ConfigError, match="style"):
        world.get("digits").sample(range(2), bugs=[StyleTrigger("sepia", 1, 0.1)])
    with pytest.raises(ConfigError, match="patch.colour: unknown parameter"):
        parse_bug("patch:colour=red")


def test_world_show_writes_png(tmp_path):
    from xaudit.world.render import show

    out = show("shapes", bugs=["patch:pattern=checker,size_px=5,target_class=1,poison_rate=0.5"], n=6,
               out=tmp_path / "g.png")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


def test_a_bug_without_a_criterion_never_claims_it_took():
    from xaudit.world.bugs import Bug

    class Quiet(Bug):
        kind = "quiet"

        def params(self):
            return {"kind": self.kind}

    (c,) = Quiet("q").took(None)
    assert c["took"] is False and c["value"] is None and "declares no" in c["criterion"]
