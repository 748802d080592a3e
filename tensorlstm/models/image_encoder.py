"""Image encoders for captioning: torchvision CNNs with weights from a local file, or a weight-free pixel grid.

* ``resnet50`` / ``resnet101`` / ``resnet152`` / ``inception_v3`` (Show and Tell used Inception): the
  globally average-pooled last feature map (2,048 values), the classifier removed. Weights: ``imagenet``
  reads the file torchvision would download (``$TORCH_HOME/hub/checkpoints/<name>``, ImageNet-1k V1 weights)
  and never downloads; a path reads that state dict; ``none`` keeps the random initialisation (tests).
* ``pixels``: the image averaged over a g x g grid, RGB in [0, 1] (3 g^2 values). No weights at all: the
  encoder of the generated ``shapes`` set, whose captions depend on colours and places that the grid keeps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tensorlstm.errors import UserError

CNNS = {  # name -> (torchvision builder, weights enum, input side)
    "resnet50": ("resnet50", "ResNet50_Weights", 224),
    "resnet101": ("resnet101", "ResNet101_Weights", 224),
    "resnet152": ("resnet152", "ResNet152_Weights", 224),
    "inception_v3": ("inception_v3", "Inception_V3_Weights", 299),
}
ENCODERS = ("pixels", *CNNS)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet normalisation of torchvision's weights


def expected_weights_file(name: str) -> tuple[Path, str]:
    """Where torchvision keeps the ImageNet weights of `name` and the URL they come from."""
    import torchvision.models as tvm

    url = getattr(tvm, CNNS[name][1]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1], url


class ImageEncoder:
    """``encoder(list of PIL RGB images) -> np.ndarray (n, feature_size)`` (no gradients; eval mode)."""

    def __init__(self, name: str, weights: str = "imagenet", image_size: int | None = None, grid: int = 8,
                 device: torch.device | str = "cpu") -> None:
        if name not in ENCODERS:
            raise UserError(f"unknown task.encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
        self.name, self.device = name, torch.device(device)
        if name == "pixels":
            if int(grid) < 1:
                raise UserError(f"task.pixels_grid={grid} must be >= 1")
            self.grid, self.net = int(grid), None
            self.feature_size = 3 * self.grid**2
            self.key = f"pixels{self.grid}"
            return
        self.image_size = int(image_size or CNNS[name][2])
        self.net, tag = self._build_cnn(name, str(weights))
        self.feature_size = 2048
        self.key = f"{name}_{tag}_{self.image_size}"

    def _build_cnn(self, name: str, weights: str):
        import torchvision.models as tvm

        builder = getattr(tvm, CNNS[name][0])
        kwargs = {"aux_logits": True, "init_weights": False} if name == "inception_v3" else {}
        net = builder(weights=None, **kwargs)
        if weights == "none":
            tag = "random"
        else:
            if weights == "imagenet":
                path, url = expected_weights_file(name)
                hint = (f"download {url} on a machine with internet and put it at {path} (or pass "
                        f"task.encoder_weights=<file.pth>; task.encoder_weights=none for random weights)")
            else:
                path, hint = Path(weights), "pass the path of a torchvision state dict (.pth)"
            if not path.is_file():
                raise UserError(f"task.encoder={name} needs the weights file {path}: {hint}")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as e:  # a torch pickle error or a state dict of another net
                raise UserError(f"{path}: not the {name} weights torchvision expects ({str(e).splitlines()[0]})"
                                ) from e
            tag = path.stem.replace("_", "-")
            if name == "inception_v3":
                net.transform_input = True  # as torchvision sets it for these weights (trained on other scaling)
        net.fc = torch.nn.Identity()
        if name == "inception_v3":
            net.AuxLogits = None
            net.aux_logits = False
        return net.eval().to(self.device), tag

    @torch.no_grad()
    def __call__(self, images: list) -> np.ndarray:
        if self.net is None:  # pixel grid: box-filtered to g x g, channels first, flattened
            from PIL import Image

            out = [np.asarray(im.resize((self.grid, self.grid), Image.Resampling.BOX), dtype=np.float32)
                   .transpose(2, 0, 1).reshape(-1) / 255.0 for im in images]
            return np.stack(out)
        from PIL import Image

        s = self.image_size
        batch = np.stack([np.asarray(im.resize((s, s), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
                          for im in images])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        return self.net(x.to(self.device)).float().cpu().numpy()
