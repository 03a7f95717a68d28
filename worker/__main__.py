"""python -m worker -config FILE -kind http,browser=4"""

import sys

from shared.service import main
from worker.crawl import run

if __name__ == "__main__":
    sys.exit(main("worker", run, sys.argv[1:], with_kind=True))
