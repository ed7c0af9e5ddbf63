"""Download SNLI 1.0, MultiNLI 1.0 and GloVe into a data folder (see spinn/data/download.py).

    python scripts/download.py snli glove.840B.300d --root data
    python scripts/download.py multinli --root data --base-url http://my-mirror/nli

Resources: snli, multinli, glove.840B.300d, glove.42B.300d, glove.6B.
"""

import sys

from spinn.data.download import main

if __name__ == "__main__":
    sys.exit(main())
