"""`python -m api`: the same server as `fastcodellama serve`."""
import sys

from fastcodellama.cli.main import main

sys.exit(main(["serve", *sys.argv[1:]]))
