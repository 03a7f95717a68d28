"""python -m foreman -config FILE"""

import sys

from foreman.schedule import run
from shared.service import main

if __name__ == "__main__":
    sys.exit(main("foreman", run, sys.argv[1:]))
