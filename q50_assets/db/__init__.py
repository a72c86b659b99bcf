"""Database models, engine construction, migrations and the sample loader."""
