"""Names shared by the front-ends without importing torch (the plugin must load without it).

The order of each tuple is the Processing enum index of the public contract.
"""

ARCHITECTURES = ("unet", "unetpp", "deeplabv3plus", "fcn")
ARCHITECTURE_LABELS = ("UNet", "UNet++", "DeepLabv3+", "FCN")
LOSSES = ("ce", "dice", "dice_ce", "focal", "tversky", "unified_focal")
LOSS_LABELS = ("Cross-entropy", "Dice", "Dice + cross-entropy", "Focal", "Tversky", "Unified focal")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnxruntime", "torch")
CLASS_WEIGHTS = ("none", "inverse_frequency")
SCHEDULES = ("onecycle", "cosine")
IGNORE_INDEX = 255


def parse_model_options(text: str) -> dict:
    """MODEL_OPTIONS as typed by a user: empty, or a JSON object (checked against the
    architecture later, by core.train.validate)."""
    import json

    from .errors import GeoSegError

    text = (text or "").strip()
    if not text:
        return {}
    try:
        options = json.loads(text)
    except ValueError as e:
        raise GeoSegError(f"MODEL_OPTIONS is not valid JSON ({e}).") from None
    if not isinstance(options, dict):
        raise GeoSegError('MODEL_OPTIONS must be a JSON object, e.g. {"base_width": 16}.')
    return options
