"""The ``folder`` world: a user's own images (``xaudit audit --data DIR``), with optional labels and masks.

``path`` is one of

- a folder of images in class subfolders, as torchvision's ImageFolder reads it (``DIR/cat/001.jpg``):
  a subfolder named by an integer is that class index (``DIR/207/x.jpg`` is class 207, so a folder can
  follow a model's own output order); otherwise the subfolders sorted by name are classes 0, 1, ...
  (ImageFolder's convention);
- a flat folder of images, with labels from a CSV (``labels``: columns ``path`` (relative to the folder)
  and ``label``, an integer class index or a class name; names are numbered in sorted order), or no
  labels at all (checks that need a label then say so);
- a ``.safetensors`` file with ``images`` float [N, C, H, W] in [0, 1] (or uint8), and optionally
  ``labels`` int64 [N] and ``masks`` [N, H, W] (what :func:`xaudit.audit` writes for in-memory tensors).

Images are read with Pillow, in sorted relative-path order, converted to RGB (or L for ``channels: 1``)
and brought to ``size`` x ``size`` by the ``resize`` rule: ``center_crop`` (the ImageNet evaluation
transform: the shorter side resized to size / crop_pct, then the central size x size crop) or
``squash`` (resized to size x size, aspect ratio not kept); or by a user function ``transform``
(``module:callable``, PIL image -> float tensor [C, size, size] in [0, 1]). Pixel values stay in [0, 1]:
normalization belongs to the model (``xaudit audit --normalize``).

A file with an image extension that Pillow cannot decode (corrupt, truncated) is skipped and counted:
:attr:`FolderWorld.skipped` lists its path and the reason. ``limit`` keeps the first ``limit`` readable
images (the files after them are not read).

Masks (``masks``: a folder mirroring the image folder; ``cat/001.jpg``'s mask is ``cat/001.<any image
extension>``): nonzero pixels are the mask. A mask must have its image's size (else a ConfigError naming
both); it goes through the same resize and crop (nearest neighbour). An image without a mask file gets an
all-False mask (checks that need masks leave it out). Masks need xaudit's own resize rule: a custom
``transform`` cannot be applied to them.

Identity: :meth:`config` holds ``digest``, the blake2b of every file read (the images used, the labels
CSV, the masks) and of the rule, so a cell's key changes when the images change; a world built from a
config whose digest no longer matches the files refuses (``the images changed since this run was
planned``). The world has one split, ``test``; sample i is the i-th readable image.
"""
from __future__ import annotations

import csv
import hashlib
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xaudit.core.errors import ConfigError, check_choice, check_int, check_range
from xaudit.world.base import WORLDS, Batch, World, as_indices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
RESIZE_RULES = ("center_crop", "squash")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
PATH_COLUMNS = ("path", "file", "filename", "image")
LABEL_COLUMNS = ("label", "class", "target")
NO_LABEL = -1


@dataclass
class _Loaded:
    """What a folder holds once read: tensors, per-image paths, the skipped files, the digest."""
    images: torch.Tensor                 # float32 [N, C, S, S] in [0, 1]
    labels: torch.Tensor                 # int64 [N], NO_LABEL where unknown
    masks: torch.Tensor                  # bool [N, S, S]
    paths: list[str]                     # relative path of each image
    has_mask: list[bool]
    skipped: list[tuple[str, str]]       # (relative path, reason)
    class_names: tuple[str, ...]
    digest: str
    ignored: list[str] = field(default_factory=list)   # files without an image extension


_MEMO: dict[str, _Loaded] = {}           # per process: a folder is read once, whatever the cells


def _rule_key(cfg: dict[str, Any]) -> str:
    import json

    return json.dumps({k: v for k, v in sorted(cfg.items()) if k != "digest"}, sort_keys=True)


@WORLDS.register("folder")
class FolderWorld(World):
    """A user's images (see the module docstring)."""

    name = "folder"
    splits = ("test",)
    allowed_sizes = ()

    def __init__(self, path: str | None = None, size: int | None = 224, seed: int = 0, *, labels: str | None = None,
                 masks: str | None = None, resize: str = "center_crop", crop_pct: float = 0.875,
                 interpolation: str = "bilinear", channels: int = 3, transform: str | None = None,
                 limit: int | None = None, digest: str | None = None):
        if not path:
            raise ConfigError("path", "the folder world needs `path`: a folder of images (class subfolders, or flat "
                                      "with a labels CSV) or a .safetensors file of images")
        self.path = str(Path(path).expanduser().resolve())
        self.size = 224 if size is None else size
        check_int("size", self.size, 8, 4096)
        self.seed = int(seed)
        check_choice("resize", resize, RESIZE_RULES)
        check_range("crop_pct", crop_pct, 0.0, 1.0, lo_open=True)
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        check_choice("channels", channels, (1, 3))
        if limit is not None:
            check_int("limit", limit, 1, 10_000_000)
        self.labels_path = None if labels is None else str(Path(labels).expanduser().resolve())
        self.masks_path = None if masks is None else str(Path(masks).expanduser().resolve())
        self.resize, self.crop_pct, self.interpolation = resize, float(crop_pct), interpolation
        self.channels, self.transform, self.limit = int(channels), transform, limit
        if transform is not None and masks is not None:
            raise ConfigError("masks", "masks need xaudit's own resize rule (center_crop or squash); a custom "
                                       f"transform ({transform}) cannot be applied to them. Drop --transform or --masks")
        key = _rule_key(self._rule()) + _stat_signature(self)     # re-read when a file changes
        loaded = _MEMO.get(key)
        if loaded is None:
            loaded = _read(self)
            if len(_MEMO) >= 8:
                _MEMO.clear()
            _MEMO[key] = loaded
        if digest is not None and loaded.digest != digest:
            raise ConfigError("path", f"the images in {self.path} (or their labels or masks) changed since this run "
                                      "was planned (their digest differs); start a new run (--out) or restore the files")
        self._data = loaded
        self.num_classes = len(loaded.class_names) if loaded.class_names else (
            int(loaded.labels.max()) + 1 if len(loaded.labels) and int(loaded.labels.max()) >= 0 else 0)
        self.class_names = loaded.class_names

    # -- identity ------------------------------------------------------------------------------
    def _rule(self) -> dict[str, Any]:
        return {"world": self.name, "path": self.path, "size": self.size, "seed": self.seed,
                "labels": self.labels_path, "masks": self.masks_path, "resize": self.resize,
                "crop_pct": self.crop_pct, "interpolation": self.interpolation, "channels": self.channels,
                "transform": self.transform, "limit": self.limit}

    def config(self) -> dict[str, Any]:
        return {**self._rule(), "digest": self._data.digest}

    @classmethod
    def label_for(cls, config: dict[str, Any]) -> str:
        """``folder@224[<folder name>:<digest prefix>]``: the paths and the rule are in the config."""
        name = Path(str(config.get("path", "?"))).name
        return f"folder@{config.get('size')}[{name}:{str(config.get('digest', ''))[:8]}]"

    # -- contents ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data.paths)

    @property
    def paths(self) -> list[str]:
        return list(self._data.paths)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(self._data.skipped)

    @property
    def ignored(self) -> list[str]:
        return list(self._data.ignored)

    @property
    def has_labels(self) -> bool:
        return bool(len(self._data.labels)) and bool((self._data.labels >= 0).all())

    @property
    def has_masks(self) -> bool:
        return any(self._data.has_mask)

    def summary(self) -> dict[str, Any]:
        """What the report shows about the data: counts, skipped files with reasons, labels and masks."""
        d = self._data
        return {"path": self.path, "images": len(d.paths), "skipped": [list(s) for s in d.skipped],
                "ignored": len(d.ignored), "labels": self.has_labels, "class_names": list(d.class_names)[:50],
                "masks": sum(d.has_mask), "size": self.size, "resize": self.transform or self.resize,
                "digest": d.digest}

    # -- sampling ------------------------------------------------------------------------------
    def labels(self, indices, split: str = "test") -> torch.Tensor:
        check_choice("split", split, self.splits)
        return self._data.labels[self._valid(as_indices(indices))]

    def _valid(self, idx: torch.Tensor) -> torch.Tensor:
        """The indices the folder holds: a folder has len(self) images; indices past it are dropped."""
        if len(idx) and int(idx.min()) < 0:
            raise ConfigError("indices", f"must be >= 0, got {int(idx.min())}")
        return idx[idx < len(self)]

    def sample(self, indices, split: str = "test", bugs=(), force: bool = False) -> Batch:
        """The images at ``indices`` (those past the folder's size are dropped: asking a 16-image folder
        for 64 gives 16), with ``bugs`` applied in order (e.g. a test-time :class:`~xaudit.world.Shift`)."""
        check_choice("split", split, self.splits)
        idx = self._valid(as_indices(indices))
        d = self._data
        for bug in bugs:
            bug.validate(self)
        labels = d.labels[idx].clone()
        batch = Batch(images=d.images[idx].clone(), labels=labels, true_labels=labels.clone(),
                      object_mask=d.masks[idx].clone(), indices=idx, split=split)
        seed = self._split_seed(split)
        for bug in bugs:
            bug.apply(self, batch, seed, force=force)
        return batch


# ------------------------------------------------------------------------------------------- reading
def _stat_signature(w: FolderWorld) -> str:
    """Size and modification time of every file the world may read (cheap: no file is opened)."""
    h = hashlib.blake2b(digest_size=16)
    for root in (w.path, w.labels_path, w.masks_path):
        if root is None:
            continue
        p = Path(root)
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        for f in files:
            st = f.stat()
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read(w: FolderWorld) -> _Loaded:
    p = Path(w.path)
    if p.is_file():
        if p.suffix.lower() != ".safetensors":
            raise ConfigError("path", f"{p} is a file; give a folder of images or a .safetensors file of images")
        return _read_tensors(w, p)
    if not p.is_dir():
        raise ConfigError("path", f"no such folder: {p}")
    h = hashlib.blake2b(digest_size=16)
    h.update(_rule_key(w._rule()).encode())
    files, ignored = _list_images(p)
    labels_of, class_names = _labels(w, p, files, h)
    fn = _user_transform(w.transform) if w.transform else None
    images, labels, masks, paths, has_mask, skipped = [], [], [], [], [], []
    for rel in files:
        if w.limit is not None and len(images) >= w.limit:
            break
        data = (p / rel).read_bytes()
        try:
            im = _decode(data)
        except Exception as e:   # Pillow raises many types on bad files
            skipped.append((rel, f"{type(e).__name__}: {e}"))
            continue
        h.update(rel.encode() + b"\0" + hashlib.blake2b(data, digest_size=16).digest())
        size = im.size
        im = im.convert("RGB" if w.channels == 3 else "L")
        x = _to_tensor(fn(im), w, rel) if fn else _geometry(im, w, _resample(w.interpolation))
        m = _mask(w, rel, size, h)
        images.append(x)
        masks.append(m if m is not None else torch.zeros(w.size, w.size, dtype=torch.bool))
        has_mask.append(m is not None)
        labels.append(labels_of(rel))
        paths.append(rel)
    if not images:
        what = f"{len(skipped)} unreadable image file(s), e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else (
            f"no image files ({', '.join(IMAGE_EXTENSIONS)})")
        raise ConfigError("path", f"{p} has no readable image: {what}")
    return _Loaded(images=torch.stack(images), labels=torch.tensor(labels, dtype=torch.int64),
                   masks=torch.stack(masks), paths=paths, has_mask=has_mask, skipped=skipped,
                   class_names=class_names, digest=h.hexdigest(), ignored=ignored)


def _list_images(root: Path) -> tuple[list[str], list[str]]:
    images, ignored = [], []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(root).parts):
            continue
        rel = f.relative_to(root).as_posix()
        (images if f.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(rel)
    return images, ignored


def _decode(data: bytes):
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()        # decodes everything: a truncated file raises here
    return im


def _resample(name: str):
    from PIL import Image

    return {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST}[name]


def _geometry(im, w: FolderWorld, resample) -> torch.Tensor:
    """Resize (and center-crop) ``im`` by the world's rule; float [C, S, S] in [0, 1] (or bool [S, S] for
    a mask in mode '1'/'L' when called by _mask, which converts)."""
    import numpy as np

    s = w.size
    if w.resize == "squash":
        im = im.resize((s, s), resample)
    else:
        scale = s / w.crop_pct
        iw, ih = im.size
        if iw <= ih:
            nw, nh = int(round(scale)), int(round(scale * ih / iw))
        else:
            nw, nh = int(round(scale * iw / ih)), int(round(scale))
        im = im.resize((max(nw, s), max(nh, s)), resample)
        left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
        im = im.crop((left, top, left + s, top + s))
    a = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(a.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def _to_tensor(x: Any, w: FolderWorld, rel: str) -> torch.Tensor:
    x = torch.as_tensor(x).float()
    want = (w.channels, w.size, w.size)
    if tuple(x.shape) != want:
        raise ConfigError("transform", f"{w.transform} returned a tensor of shape {tuple(x.shape)} for {rel}; it must "
                                       f"return [C, size, size] = {list(want)} (set --size to its output size)")
    if float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6:
        raise ConfigError("transform", f"{w.transform} returned values in [{float(x.min()):.3g}, {float(x.max()):.3g}] "
                                       f"for {rel}; xaudit's images are in [0, 1]: leave normalization to the model "
                                       "(--normalize)")
    return x.contiguous()


def _user_transform(spec: str):
    mod, _, attr = spec.partition(":")
    if not attr:
        raise ConfigError("transform", f"must be 'module:callable' (a function PIL image -> tensor [C, H, W] in "
                                       f"[0, 1]) or one of {', '.join(RESIZE_RULES)}; got {spec!r}")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError("transform", f"cannot import {spec!r}: {e}") from None


def _mask(w: FolderWorld, rel: str, size: tuple[int, int], h) -> torch.Tensor | None:
    """The image's mask (bool [S, S], resized like the image), None without a mask file."""
    if w.masks_path is None:
        return None
    root = Path(w.masks_path)
    stem = Path(rel).with_suffix("")
    found = [root / (stem.as_posix() + ext) for ext in IMAGE_EXTENSIONS if (root / (stem.as_posix() + ext)).is_file()]
    if not found:
        return None
    data = found[0].read_bytes()
    try:
        m = _decode(data)
    except Exception as e:
        raise ConfigError("masks", f"the mask {found[0]} of image {rel} cannot be read ({type(e).__name__}: {e})") from None
    if m.size != size:
        raise ConfigError("masks", f"the mask {found[0]} is {m.size[0]}x{m.size[1]} px but its image "
                                   f"{Path(w.path) / rel} is {size[0]}x{size[1]} px; a mask must have its image's size")
    h.update(b"mask:" + rel.encode() + hashlib.blake2b(data, digest_size=16).digest())
    import numpy as np
    from PIL import Image

    binary = Image.fromarray(((np.asarray(m.convert("L")) > 0) * 255).astype(np.uint8))
    return _geometry(binary, w, Image.Resampling.NEAREST)[0] > 0.5


def _labels(w: FolderWorld, root: Path, files: list[str], h):
    """(relative path -> class index, class names) from the labels CSV or the class subfolders."""
    if w.labels_path is not None:
        lp = Path(w.labels_path)
        if not lp.is_file():
            raise ConfigError("labels", f"no such labels file: {lp}")
        text = lp.read_text()
        h.update(b"labels:" + text.encode())
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise ConfigError("labels", f"{lp} is empty; it needs a header `path,label` and one row per image")
        header = [c.strip().lower() for c in rows[0]]
        pcol = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
        lcol = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
        if pcol is None or lcol is None:
            raise ConfigError("labels", f"{lp} needs a header naming a path column ({'/'.join(PATH_COLUMNS)}) and a "
                                        f"label column ({'/'.join(LABEL_COLUMNS)}); its header is {rows[0]}")
        table: dict[str, str] = {}
        for i, r in enumerate(rows[1:], start=2):
            if not r or all(not c.strip() for c in r):
                continue
            if len(r) <= max(pcol, lcol):
                raise ConfigError("labels", f"{lp} line {i} has {len(r)} column(s): {r}")
            table[Path(r[pcol].strip()).as_posix()] = r[lcol].strip()
        values = list(table.values())
        if all(_is_int(v) for v in values):
            index = {v: int(v) for v in values}
            names: tuple[str, ...] = ()
        else:
            names = tuple(sorted(set(values)))
            index = {v: i for i, v in enumerate(names)}
        missing = [f for f in files if f not in table]
        if missing and len(missing) == len(files):
            raise ConfigError("labels", f"{lp} labels none of the images in {root} (e.g. {files[0]!r} has no row); its "
                                        f"paths must be relative to the folder, e.g. {next(iter(table), 'x.png')!r}")
        return (lambda rel: index[table[rel]] if rel in table else NO_LABEL), names
    dirs = sorted({Path(f).parts[0] for f in files if len(Path(f).parts) > 1})
    if dirs and all(len(Path(f).parts) > 1 for f in files):
        if all(_is_int(d) for d in dirs):
            return (lambda rel: int(Path(rel).parts[0])), ()
        index = {d: i for i, d in enumerate(dirs)}
        return (lambda rel: index[Path(rel).parts[0]]), tuple(dirs)
    return (lambda rel: NO_LABEL), ()


def _is_int(v: str) -> bool:
    try:
        int(v)
    except (TypeError, ValueError):
        return False
    return True


def _read_tensors(w: FolderWorld, p: Path) -> _Loaded:
    from safetensors.torch import load_file

    data = p.read_bytes()
    h = hashlib.blake2b(digest_size=16)
    h.update(_rule_key(w._rule()).encode())
    h.update(hashlib.blake2b(data, digest_size=16).digest())
    try:
        t = load_file(str(p))
    except Exception as e:
        raise ConfigError("path", f"{p} is not a readable safetensors file ({e})") from None
    if "images" not in t:
        raise ConfigError("path", f"{p} has no `images` tensor (it has {sorted(t)})")
    x = t["images"]
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    x = x.float()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ConfigError("images", f"must be a tensor [N, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError("images", f"must be square (H == W), got {tuple(x.shape[-2:])}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ConfigError("images", f"must be in [0, 1] (normalization belongs to the model: pass normalize=...), got "
                                    f"values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    n = len(x) if w.limit is None else min(len(x), w.limit)
    x = x[:n]
    if x.shape[1] != w.channels:
        x = x.expand(-1, 3, -1, -1).clone() if w.channels == 3 else x.mean(1, keepdim=True)
    if x.shape[-1] != w.size:
        raise ConfigError("size", f"the images in {p} are {x.shape[-1]} px; set size to {x.shape[-1]}")
    labels = t.get("labels")
    labels = (torch.full((n,), NO_LABEL, dtype=torch.int64) if labels is None else labels.to(torch.int64)[:n])
    masks = t.get("masks")
    if masks is not None and tuple(masks.shape[-2:]) != tuple(x.shape[-2:]):
        raise ConfigError("masks", f"the masks are {tuple(masks.shape[-2:])} but the images are {tuple(x.shape[-2:])}")
    masks = torch.zeros(n, w.size, w.size, dtype=torch.bool) if masks is None else (masks[:n] != 0)
    has = [bool(m.any()) for m in masks]
    return _Loaded(images=x.contiguous(), labels=labels, masks=masks, paths=[f"{p.name}[{i}]" for i in range(n)],
                   has_mask=has, skipped=[], class_names=(), digest=h.hexdigest())
