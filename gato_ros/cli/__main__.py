"""`python -m gato_ros.cli ...` is `gato-ros ...`."""
import sys

from gato_ros.cli import main

sys.exit(main())
