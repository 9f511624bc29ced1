"""`python -m edgecompress`: the command line. Guarded, so that tools importing every module (the docs' API
reference) do not run the CLI with their own arguments."""

from edgecompress.cli import main

if __name__ == "__main__":
    main()
