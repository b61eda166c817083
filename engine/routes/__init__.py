"""Integration routes (not HTTP routes): which messages go to which destinations, as YAML data."""
