"""`python -m tensorlstm <command>`: the `tlstm` CLI (what torchrun starts: torchrun ... -m tensorlstm train)."""

import sys

from tensorlstm.cli import main

if __name__ == "__main__":
    sys.exit(main())
