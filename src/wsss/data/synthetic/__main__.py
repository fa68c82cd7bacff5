"""`python -m wsss.data.synthetic OUT [--threads N] [--set KEY=JSON] [--preview PNG]`."""

import sys

from wsss.data.synthetic.command import main

sys.exit(main())
