"""`python -m comp`: the command line. Guarded: a spawned child process (comp.core.isolate) imports
this module as __mp_main__ and must not run the CLI again."""

if __name__ == "__main__":
    import sys

    from comp.cli import main

    sys.exit(main())
