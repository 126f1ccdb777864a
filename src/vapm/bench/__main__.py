"""`python -m vapm.bench`: the pipeline benchmark (vapm.bench.pipeline)."""
import sys

from vapm.bench.pipeline import main

sys.exit(main())
