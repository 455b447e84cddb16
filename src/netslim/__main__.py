"""``python -m netslim`` (and ``torchrun -m netslim``): the ``netslim`` command line."""

from netslim.cli import main

if __name__ == "__main__":
    main()
