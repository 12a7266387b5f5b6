"""Networks: plain modules that take every size as an argument.

Generators expose ``latent_dim`` (z ~ N(0, I) of shape ``(B, latent_dim)``); discriminators
return logits of shape ``(B,)``. A conditional network takes ``labels`` as a ``forward`` parameter of
that name. Each module's docstring lists its parameter names for patterns.
"""

from alttrain.models.bigan import JointMLPDiscriminator, MLPEncoder
from alttrain.models.conditional import (
                                    ACGANDiscriminator,
                                    ConditionalDCGANGenerator,
                                    ProjectionDiscriminator,
)
from alttrain.models.dcgan import DCGANDiscriminator, DCGANGenerator
from alttrain.models.mlp import MLPDiscriminator, MLPGenerator
from alttrain.models.resnet import (
                                    ConditionalResNetGenerator,
                                    ResNetDiscriminator,
                                    ResNetGenerator,
                                    ResNetProjectionDiscriminator,
)

__all__ = ["ACGANDiscriminator", "ConditionalDCGANGenerator", "ConditionalResNetGenerator", "DCGANDiscriminator",
           "DCGANGenerator", "JointMLPDiscriminator", "MLPDiscriminator", "MLPEncoder", "MLPGenerator",
           "ProjectionDiscriminator", "ResNetDiscriminator", "ResNetGenerator", "ResNetProjectionDiscriminator"]
