"""``python -m boilermaker.cli``: the same as the ``boilermaker`` command."""

from boilermaker.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
