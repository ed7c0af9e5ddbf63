"""Train SPINN or a baseline encoder: python scripts/train.py --config configs/small.yaml (spinn/train.py)."""

import sys

from spinn.train import main

if __name__ == "__main__":
    sys.exit(main())
