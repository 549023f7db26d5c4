"""The console script `gptkit`, and `python -m gptkit`.

Importing the command line loads torch and the plugins, which takes seconds; a Ctrl-C then ends
with `interrupted` and exit 130 once they are loaded (see gptkit.interrupts), never a traceback.
"""

from gptkit.interrupts import interrupts_deferred

with interrupts_deferred():
    from gptkit.cli import main

if __name__ == "__main__":
    main()
