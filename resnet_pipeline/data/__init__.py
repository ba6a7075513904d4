"""Data: prepare (acquire, validate, split) and the DALI and torch loaders.

Importing this package does not import DALI (only `make_loader` with a DALI backend does), nor
torch (only the loaders and the CIFAR-10 python reader do).
"""

from resnet_pipeline.data.config import DataConfig, DataError, load_data_config
from resnet_pipeline.data.demo import generate_demo
from resnet_pipeline.data.loader import make_loader, resolve_backend
from resnet_pipeline.data.prepare import dataset_fingerprint, load_manifest, prepare

__all__ = ["DataConfig", "DataError", "dataset_fingerprint", "generate_demo", "load_data_config", "load_manifest",
           "make_loader", "prepare", "resolve_backend"]
