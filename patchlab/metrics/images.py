"""Checks shared by the metrics: image batches [B x C x H x W] in [-1, 1] with C = 1 or 3."""

import torch


def check_images(images: torch.Tensor, what: str = "images", *, cpu: bool = True) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a tensor [B x C x H x W] with C = 1 or 3, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch")
    return images.detach().float().cpu() if cpu else images.detach()


def check_pair(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = check_images(real, "real"), check_images(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake images differ in shape: {list(real.shape[1:])} vs {list(fake.shape[1:])}")
    return real, fake
