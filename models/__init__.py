"""Segmentation networks in plain torch (UNet, UNet++, DeepLabv3+, FCN) and their registry.

Empty until the training issue lands; torch is imported only when a model is built.
"""
