"""Entry point: ``python -m mailshard.agent --config ... --role-file ... --data-dir ... --token-file ...``."""

import sys

from mailshard.agent.cli import main

sys.exit(main())
