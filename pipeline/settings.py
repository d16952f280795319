"""Settings.from_env(): placeholder replaced below."""
