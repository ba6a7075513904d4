"""Pure nn.Modules of the paper's ResNets. Imports only torch."""

from resnet_pipeline.models.blocks import SHORTCUTS, VARIANTS, BasicBlock, Bottleneck, ZeroPadShortcut, make_shortcut
from resnet_pipeline.models.complexity import count_mult_adds, count_params, resnet_mult_adds, zoo_table
from resnet_pipeline.models.resnet import (CIFAR_DEPTHS, DEFAULT_SHORTCUT, IMAGENET_DEPTHS, ModelConfig, ResNet,
                                           build_model, cifar_blocks_per_stage, infer_family, net_label,
                                           net_name, resnet_cifar, resnet_imagenet, trial_name)

__all__ = [
    "SHORTCUTS", "VARIANTS", "BasicBlock", "Bottleneck", "ZeroPadShortcut", "make_shortcut",
    "count_mult_adds", "count_params", "resnet_mult_adds", "zoo_table",
    "CIFAR_DEPTHS", "DEFAULT_SHORTCUT", "IMAGENET_DEPTHS", "ModelConfig", "ResNet", "build_model",
    "cifar_blocks_per_stage", "infer_family", "net_label", "net_name", "resnet_cifar", "resnet_imagenet",
    "trial_name",
]
