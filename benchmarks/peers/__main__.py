import sys

from benchmarks.peers.driver import main

sys.exit(main())
