"""``python -m alttrain <command> ...``: the same as the ``alttrain`` command."""

from alttrain.run.entry import main

main()
