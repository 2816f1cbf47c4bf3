import sys

from detbooth_client.cli import main

sys.exit(main())
