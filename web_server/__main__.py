"""python -m web_server -config FILE -addr HOST:PORT"""

import sys

from shared.service import main
from web_server.app import run

if __name__ == "__main__":
    sys.exit(main("web_server", run, sys.argv[1:], with_addr=True))
