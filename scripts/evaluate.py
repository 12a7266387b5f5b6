"""Score a trained checkpoint, or a folder of generated images, against a data set; print the metrics as JSON.

    python scripts/evaluate.py checkpoint=outputs/2026-11-24/10-00-00 inception_weights=~/pt_inception.pth
    python scripts/evaluate.py checkpoint=outputs/.../checkpoints/last.pt num_samples=10000 out=metrics.json
    python scripts/evaluate.py images=generated/ data=cifar10 data.root=/data inception_weights=PATH

The arguments are described in ``alttrain/run/evaluate.py``.
"""

import sys

from alttrain.run.cli import report_user_errors
from alttrain.run.evaluate import main

if __name__ == "__main__":
    report_user_errors(main, sys.argv[1:])
