"""Jobs: the durable record of one edit of one source instance (store) and how it runs."""
