"""Architecture names, torch-free: the model registry's vocabulary, read by core and the front-ends.

The order of each tuple is the Processing enum index of the public contract.
"""

ARCHITECTURES = ("unet", "unetpp", "deeplabv3plus", "fcn")
ARCHITECTURE_LABELS = ("UNet", "UNet++", "DeepLabv3+", "FCN")
