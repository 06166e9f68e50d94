"""`python -m moemerge` entry point."""

from moemerge.cli import main

if __name__ == "__main__":
    main()
