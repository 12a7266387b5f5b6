"""Write samples from a trained generator.

    python scripts/sample.py checkpoint=outputs/2026-11-24/10-00-00 num_samples=64 out=grid.png
    python scripts/sample.py checkpoint=outputs/.../checkpoints/last.pt num_samples=2500 out=samples.pt
    python scripts/sample.py checkpoint=outputs/<a conditional run> label=3 num_samples=16 out=threes.png

The arguments are described in ``alttrain/run/sample.py``.
"""

import sys

from alttrain.run.cli import report_user_errors
from alttrain.run.sample import main

if __name__ == "__main__":
    report_user_errors(main, sys.argv[1:])
