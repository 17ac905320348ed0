"""`relay-agent`'s subcommands (typer). Thin: the work lives in the other packages."""
