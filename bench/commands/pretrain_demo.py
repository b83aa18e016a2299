"""Pretrain the demo backbone on a generated upstream task and measure what it is worth.

    python -m bench.commands.pretrain_demo [--out PATH] [--epochs N] [--images N]   # writes bench/assets/demo_vit.safetensors
    python -m bench.commands.pretrain_demo --probe-only                              # linear probes of the committed file

Upstream task (unlike the six demo tasks): 32x32 scenes of one main object -- one of 12 geometric
shapes or 26 capital letters (Pillow's bundled font), any colour, size and angle -- plus up to two
small distractor shapes, over one of four backgrounds (plain, gradient, cloudy noise, faint grating).
Four classification heads on the class token learn the main object's identity (38), hue (8 bins)
and place (3x3 grid), and the background type (4): generic shape, stroke, colour, position and
texture features. The heads are dropped; only the backbone is saved. Deterministic: fixed seeds
for data, weights and order, deterministic algorithms; ``main`` runs on two threads.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones import DEMO_CHECKPOINT, create_demo
from ..data import open_split, shapes

SEED = 20240617
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEADS = {"object": len(shapes.SHAPE_NAMES) + len(LETTERS), "hue": 8, "place": 9, "background": 4}


def upstream_images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` upstream scenes as uint8 (N, 3, 32, 32) and their labels, one array per head."""
    size = shapes.SIZE
    background = rng.integers(0, 4, n)
    c0 = shapes.random_colours(rng, n, sat=(0.0, 0.8), val=(0.1, 0.9))
    c1 = shapes.random_colours(rng, n, sat=(0.0, 0.8), val=(0.1, 0.9))
    u, _ = shapes.object_frame(rng.uniform(0, size, n), rng.uniform(0, size, n), np.full(n, size / 2.0),
                               rng.uniform(0, 2 * np.pi, n))
    mix = np.zeros((n, size, size), np.float32)  # 0 = c0 ... 1 = c1
    mix[background == 1] = np.clip(0.5 + 0.5 * u[background == 1], 0, 1)
    mix[background == 2] = 1 / (1 + np.exp(-2 * shapes.smooth_noise(rng, int((background == 2).sum()), 3.0)))
    freq = rng.uniform(0.5, 2.5, n)[:, None, None] * np.pi
    mix[background == 3] = (0.5 + 0.25 * np.sin(freq * u))[background == 3]
    canvas = c0[:, None, None, :] + mix[..., None] * (c1 - c0)[:, None, None, :]

    for _ in range(2):  # up to two smaller distractors, drawn first
        present = rng.random(n) < 0.5
        kind = rng.integers(0, len(shapes.SHAPE_NAMES), n)
        masks = shapes.shape_masks(kind, rng.uniform(3, 29, n), rng.uniform(3, 29, n), rng.uniform(2.0, 3.5, n),
                                   rng.uniform(0, 2 * np.pi, n))
        shapes.paint(canvas, masks & present[:, None, None], shapes.random_colours(rng, n))
    obj = rng.integers(0, HEADS["object"], n)  # a shape, or a letter when >= len(SHAPE_NAMES)
    hue = rng.integers(0, 8, n)
    cy, cx = rng.uniform(5, 27, (2, n))
    place = (cy // (size / 3)).astype(int) * 3 + (cx // (size / 3)).astype(int)
    colour = shapes.hsv_to_rgb((hue + rng.uniform(-0.3, 0.3, n)) / 8 % 1.0, rng.uniform(0.6, 1, n), rng.uniform(0.6, 1, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    is_letter = obj >= len(shapes.SHAPE_NAMES)
    masks = shapes.shape_masks(obj, cy, cx, rng.uniform(4.5, 9.0, n), angle).astype(np.float32)
    masks[is_letter] = letter_masks(obj[is_letter] - len(shapes.SHAPE_NAMES), cy[is_letter], cx[is_letter],
                                    rng.integers(16, 30, int(is_letter.sum())), np.rad2deg(angle[is_letter]) % 60 - 30)
    shapes.paint(canvas, masks, colour)
    canvas += 0.04 * rng.standard_normal(canvas.shape, dtype=np.float32)
    labels = {"object": obj, "hue": hue, "place": place, "background": background}
    return shapes.to_uint8_chw(canvas), labels


def letter_masks(letters: np.ndarray, cy: np.ndarray, cx: np.ndarray, font_px: np.ndarray, degrees: np.ndarray) -> np.ndarray:
    """Alpha masks (N, 32, 32) of capital letters in Pillow's bundled font, centred at (cx, cy), rotated."""
    from PIL import Image, ImageDraw, ImageFont

    out = np.zeros((len(letters), shapes.SIZE, shapes.SIZE), np.float32)
    fonts = {}
    for i, (letter, y, x, px, deg) in enumerate(zip(letters, cy, cx, font_px, degrees)):
        if px not in fonts:
            fonts[px] = ImageFont.load_default(size=int(px))
        font = fonts[px]
        glyph = Image.new("L", (shapes.SIZE, shapes.SIZE))
        ImageDraw.Draw(glyph).text((float(x), float(y)), LETTERS[letter], font=font, fill=255, anchor="mm")
        out[i] = np.asarray(glyph.rotate(float(deg), Image.Resampling.BILINEAR, center=(float(x), float(y)))) / 255.0
    return out


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float in [-1, 1], the normalisation (mean = std = 0.5) every suite uses."""
    return images.float().div_(127.5).sub_(1.0)


def pretrain(epochs: int = 12, images: int = 32_000, batch_size: int = 128, lr: float = 2e-3,
             log=print) -> nn.Module:
    """The demo backbone trained on ``images`` upstream scenes for ``epochs`` epochs (AdamW, cosine)."""
    torch.manual_seed(SEED)
    x, y = upstream_images(np.random.default_rng(SEED), images)
    x = torch.from_numpy(x)
    y = {k: torch.from_numpy(v).long() for k, v in y.items()}
    backbone = create_demo(pretrained=False)
    heads = nn.ModuleDict({k: nn.Linear(backbone.num_features, c) for k, c in HEADS.items()})
    params = [*backbone.parameters(), *heads.parameters()]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, class token stays 3-d: decayed like timm
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = images // batch_size
    total = epochs * steps_per_epoch
    warmup = max(1, total // 12)  # one epoch at the default 12
    schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, 1e-3, 1.0, warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total - warmup)),
    ], milestones=[warmup])
    shuffle = torch.Generator().manual_seed(SEED)
    backbone.train()
    for epoch in range(epochs):
        order = torch.randperm(images, generator=shuffle)
        seen, loss_sum, correct = 0, 0.0, dict.fromkeys(HEADS, 0)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            feats = backbone.forward_head(backbone.forward_features(normalise(x[idx])), pre_logits=True)
            loss = 0.0
            for name, head in heads.items():
                logits, target = head(feats), y[name][idx]
                loss = loss + F.cross_entropy(logits, target)
                correct[name] += int((logits.argmax(1) == target).sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
        accs = ", ".join(f"{k} {100 * v / seen:.1f}%" for k, v in correct.items())
        log(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.3f}; train acc {accs}")
    return backbone.eval()


def save_backbone(backbone: nn.Module, path: Path) -> None:
    """The backbone's weights without any head, as safetensors."""
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"upstream": "bench.commands.pretrain_demo", "seed": str(SEED)})


@torch.no_grad()
def class_token_features(backbone: nn.Module, dataset, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logits class-token features (N, width) and labels (N,) of every example of ``dataset``."""
    backbone.eval()
    feats, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    for images, targets in loader:
        feats.append(backbone.forward_head(backbone.forward_features(images), pre_logits=True))
        labels.append(targets)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def linear_probe_accuracy(backbone: nn.Module, task: str, suite: str = "demo") -> float:
    """Test accuracy (percent) of a logistic regression fitted on the frozen class-token features of train800."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = class_token_features(backbone, open_split(suite, task, "train800"))
    x_test, y_test = class_token_features(backbone, open_split(suite, task, "test"))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    probe.fit(x_train, y_train)
    return 100.0 * probe.score(x_test, y_test)


def probe_table(pretrained: nn.Module, tasks: list[str] | None = None, suite: str = "demo") -> str:
    """Markdown table: linear-probe test accuracy per task, pretrained vs random initialisation (same seed)."""
    from tabulate import tabulate

    from ..catalog import load_suite

    torch.manual_seed(SEED)
    random_init = create_demo(pretrained=False)
    rows = []
    for name in tasks or list(load_suite(suite).tasks):
        rows.append([name, linear_probe_accuracy(pretrained, name, suite), linear_probe_accuracy(random_init, name, suite)])
    rows.append(["mean", np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])])
    return tabulate(rows, headers=["task", "pretrained", "random init"], tablefmt="github", floatfmt=".1f")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.commands.pretrain_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_CHECKPOINT, help=f"checkpoint path (default: {DEMO_CHECKPOINT})")
    parser.add_argument("--epochs", type=int, default=12, help="pretraining epochs (default: 12)")
    parser.add_argument("--images", type=int, default=32_000, help="upstream images (default: 32000)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    parser.add_argument("--probe-only", action="store_true", help="skip pretraining; probe the checkpoint at --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    if args.probe_only:
        backbone = create_demo(pretrained=args.out)
    else:
        start = time.perf_counter()
        backbone = pretrain(epochs=args.epochs, images=args.images, batch_size=args.batch_size, lr=args.lr)
        save_backbone(backbone, args.out)
        print(f"pretrained in {time.perf_counter() - start:.0f} s; wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    print(probe_table(backbone))


if __name__ == "__main__":
    main()
