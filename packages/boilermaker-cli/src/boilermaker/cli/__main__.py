"""``python -m boilermaker.cli``: the same as the ``boilermaker`` command."""

from boilermaker.cli.main import entry

if __name__ == "__main__":
    entry()
