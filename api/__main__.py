"""`python -m api`: the same server as `fastcodellama serve`."""
import argparse
import sys

from api.serve_cmd import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m api", description="OpenAI-compatible completion server")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
