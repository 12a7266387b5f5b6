"""alttrain's shipped configs, installed as the package ``alttrain.conf`` (Hydra reads them as ``pkg://alttrain.conf``)."""
