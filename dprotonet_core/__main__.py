import sys

from dprotonet_core.cli import main

sys.exit(main())
