"""Data sets as resumable batch streams; each factory is a Hydra target (``alttrain.data.ring8``).

Toy 2-D mixtures (``ring8``, ``grid25``) are infinite; image sets (``digits``, ``mnist``,
``cifar10``, ``image_folder``, any ``Dataset`` through ``dataset``) are finite, reshuffled per epoch
and sharded across ranks. Decoded sets (``image_folder``, ``dataset``) read in DataLoader worker
processes; the in-memory ones in the training process. Image batches are float32 in [-1, 1]; see
:class:`DataSource` and :class:`BatchStream`.
"""

from alttrain.data.custom import dataset
from alttrain.data.decoded import DecodedSource, ItemReader
from alttrain.data.folder import image_folder
from alttrain.data.images import cifar10, digits, mnist
from alttrain.data.pipeline import LoaderStream
from alttrain.data.source import BatchStream, DataSource, IndexedSource, ShardedStream
from alttrain.data.toy2d import MixtureSource, MixtureStream, grid25, ring8

__all__ = [
    "BatchStream", "DataSource", "DecodedSource", "IndexedSource", "ItemReader", "LoaderStream", "MixtureSource",
    "MixtureStream", "ShardedStream", "cifar10", "dataset", "digits", "grid25", "image_folder", "mnist", "ring8",
]
