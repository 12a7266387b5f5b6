"""Generator and discriminator networks: plain modules that take every size as an argument.

Generators expose ``latent_dim`` (z ~ N(0, I) of shape ``(B, latent_dim)``); discriminators
return logits of shape ``(B,)``. Each module's docstring lists its parameter names for patterns.
"""

from alttrain.models.dcgan import DCGANDiscriminator, DCGANGenerator
from alttrain.models.mlp import MLPDiscriminator, MLPGenerator

__all__ = ["DCGANDiscriminator", "DCGANGenerator", "MLPDiscriminator", "MLPGenerator"]
