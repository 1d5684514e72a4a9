"""`python -m agent`: same as `estate-agent`."""

import sys

from agent.cli import main

sys.exit(main())
