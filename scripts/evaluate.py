"""Evaluate a checkpoint: python scripts/evaluate.py --checkpoint runs/small --split dev.

See spinn/evaluate.py for the options.
"""

import sys

from spinn.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
