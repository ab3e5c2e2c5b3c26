"""The ``hogsend`` command line (Typer): dev, serve, worker, db, check, keys."""
