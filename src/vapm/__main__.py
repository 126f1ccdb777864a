"""`python -m vapm ...` is the `vapm` command."""
import sys

from vapm.cli.main import main

sys.exit(main())
