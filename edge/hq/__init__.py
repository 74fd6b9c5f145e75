"""Head office (issue 24): `edge hq`, the ingest service that writes every store's
counts, plays, availability and camera status into one PostgreSQL database.

Not a pipeline stage: nothing in the box imports edge.hq; edge.hq reads the box's
records and payload classes (edge.events, edge.outputs.store, edge.outputs.topics).
"""
