"""`python -m peft_apps.core.cli ...`: the `peft-apps` command."""

import sys

from . import main

sys.exit(main())
