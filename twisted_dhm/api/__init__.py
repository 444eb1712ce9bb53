"""Client-facing interfaces.  They talk only to the coordinator."""
