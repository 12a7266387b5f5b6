"""One step of gradient descent on a toy graph: which leaves does the optimizer move?

    python scripts/seed_demo.py none        # or: trainable | var_list | scope

The demo itself is alttrain/run/demo.py (also run as ``alttrain demo CASE``).
"""

from alttrain.run.demo import build, main, report  # noqa: F401 - re-exported for older imports

if __name__ == "__main__":
    main()
