"""CSE: contrastively selected embeddings scored against k-means centres (Thomine & Snoussi)."""
