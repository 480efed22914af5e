"""``python -m imgbeddings`` = the ``imgbeddings`` command."""

from .cli import main

if __name__ == "__main__":
    main()
