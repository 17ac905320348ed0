"""`relay-agent install` / `uninstall`: the stubs, the unit, the service user, and undoing it all."""
