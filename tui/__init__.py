"""loradeck's Textual front end and CLI. Never imports torch at module scope."""
