"""Shared by the tests/test_zoo_*.py modules: tiny checkpoints with a 32x32
transform (so that extraction costs little on CI) and timm run directly, the
independent twin of ped_fast.zoo.extract."""
import timm
import torch
from PIL import Image

from conftest import bench_module
from ped_fast.zoo.models import save_model_dir

# Synthetic image folders: shared with the benchmarks, not part of the library.
write_image_folder = bench_module("image_data").write_image_folder

# A 32x32 eval transform: the synthetic images are 32x32, so resizing is a
# no-op and each forward pass is ~25x cheaper than at timm's 160x160.
SMALL_CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


def small_checkpoint(folder, architecture, seed):
    """Save a seeded random `architecture` with SMALL_CONFIG in timm's hub
    layout; returns the folder (spec: ARCHITECTURE=FOLDER)."""
    torch.manual_seed(seed)
    return save_model_dir(timm.create_model(architecture), folder, architecture=architecture,
                          pretrained_cfg=SMALL_CONFIG)


def timm_features(model, files, data_config=None):
    """Pre-logit features (float32 numpy, one row per file) computed with
    timm alone: the model's eval transform, one batch, forward_features then
    forward_head(pre_logits=True)."""
    config = data_config or timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.inference_mode():
        return model.eval().forward_head(model.forward_features(batch), pre_logits=True).numpy()
