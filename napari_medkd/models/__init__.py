"""Segmentation models: every module here that registers a model in ``registry.MODELS`` is found by
the registry itself (it imports this package's modules on first use); a new model is one new file.

2D teachers: ``unet``, ``attention_unet``; 2D students: ``unet_tiny``, ``enet``, ``espnet``,
``erfnet``, ``mobilenetv2_unet``; 3D: ``unet3d`` (teacher), ``unet3d_tiny`` (student).
"""
from .attention_unet import ResAttentionUNet
from .base import TAP_NAMES, SegModel
from .cost import count_macs, count_parameters, model_table
from .enet import ENet
from .erfnet import ERFNet
from .espnet import ESPNet
from .factory import build_model, tap_info
from .mobilenetv2_unet import MobileNetV2UNet
from .taps import FeatureTaps, run_with_taps
from .unet import UNet

__all__ = ["SegModel", "TAP_NAMES", "FeatureTaps", "run_with_taps", "build_model", "tap_info",
           "count_parameters", "count_macs", "model_table", "UNet", "ResAttentionUNet", "ENet", "ERFNet",
           "ESPNet", "MobileNetV2UNet"]
