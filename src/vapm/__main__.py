"""`python -m vapm ...` is the `vapm` command."""
import sys

from vapm.cli import main

sys.exit(main())
