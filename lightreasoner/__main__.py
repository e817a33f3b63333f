"""``python -m lightreasoner``: the ``lightreasoner`` command (:func:`lightreasoner.run.app.main`)."""

import sys

from lightreasoner.run.app import main

if __name__ == "__main__":
    sys.exit(main())
