"""Train, validate, test or sample a VMoBA video DiT: ``python main.py fit [--config FILE]``."""

from vmoba.cli import main

if __name__ == "__main__":
    main()
