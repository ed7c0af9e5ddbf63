"""A small real NLI sample shipped inside the package, so that the quick start runs with no download.

``data.data_dir: spinn:sample`` (`SAMPLE`) in a config names this folder, wherever the package is
installed; ``configs/small.yaml`` trains on it. The files (gzip-compressed, read as they are):

* `TRAIN`: the 5,502 pairs of a random 1% of the SNLI 1.0 training set, with their binary parses;
* `DEV`: the first 2,000 rows of the SNLI 1.0 dev set;
* `GLOVE`: the GloVe 6B 50d vectors of every lower-cased word of those pairs that GloVe has.

SNLI rows keep the official jsonl fields except the full constituency parses. SNLI is CC BY-SA 4.0
(Bowman et al. 2015), GloVe is ODC PDDL 1.0 (Pennington et al. 2014): see README.md in this folder.
``scripts/make_sample.py`` cut them from the official files.
"""

from __future__ import annotations

from pathlib import Path

#: The value of ``data.data_dir`` that names this folder.
SAMPLE = "spinn:sample"
SAMPLE_DIR = Path(__file__).resolve().parent
TRAIN = "snli_1.0_train_0.01.jsonl.gz"
DEV = "snli_1.0_dev_first2000.jsonl.gz"
GLOVE = "glove.6B.50d.sample.txt.gz"
