"""`python -m estate.agent`: same as `estate-agent`."""

import sys

from estate.agent.cli import main

sys.exit(main())
