"""Speed benchmark of the factorized maps and cells; same as `tlstm bench` (see tensorlstm/bench.py).

python scripts/bench_cells.py [--quick] [--out bench.json] [--timer cpu] [--threads N]
"""

import sys

from tensorlstm.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
