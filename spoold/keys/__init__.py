"""The key vocabulary: settling rows against keys already seen, and the committed-key index."""
