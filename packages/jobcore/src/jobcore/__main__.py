import sys

from jobcore.cli import main

sys.exit(main())
