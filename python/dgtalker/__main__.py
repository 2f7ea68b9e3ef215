import sys

from dgtalker.cli import main

sys.exit(main())
