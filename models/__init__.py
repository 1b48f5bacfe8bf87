"""Segmentation networks in plain torch (UNet, UNet++, DeepLabv3+, FCN) and their registry.

torch is imported only when a model is built: this package, `names` and `registry` import without it.
"""
