"""Data: readers, vocabulary, GloVe, batching."""
