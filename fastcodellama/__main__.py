import sys

from fastcodellama.cli.main import main

sys.exit(main())
