#!/bin/sh
# Entry point of the trainer image: `python training/train.py` with the given arguments.
# A command that starts with an executable (python, torchrun, bash, ...) runs as given; arguments that start
# with "-" are options for train.py, so both of these work:
#   docker run IMAGE --epochs 1 --export
#   docker compose run --rm trainer python training/train.py --epochs 1 --export
set -e
case "${1:-}" in
  "" ) exec python training/train.py ;;
  -* ) exec python training/train.py "$@" ;;
  * ) exec "$@" ;;
esac
