"""Label sentence pairs: python scripts/predict.py --checkpoint runs/small --premise ... --hypothesis ...

See spinn/predict.py for the input formats.
"""

import sys

from spinn.predict import main

if __name__ == "__main__":
    sys.exit(main())
