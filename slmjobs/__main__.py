"""`python -m slmjobs ...` is the same as the `slmjobs` command."""

from slmjobs.cli import main

if __name__ == "__main__":
    main()
