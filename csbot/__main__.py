import sys

from csbot.cli import main

sys.exit(main())
