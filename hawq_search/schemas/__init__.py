"""Package data: JSON Schemas shipped with hawq-search (``plan.schema.json``)."""
