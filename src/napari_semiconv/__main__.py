import sys

from napari_semiconv.cli.main import main

sys.exit(main())
