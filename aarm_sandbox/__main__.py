import sys

from aarm_sandbox.cli.main import main

sys.exit(main())
