import sys

from zerotrain.cli import main

sys.exit(main())
